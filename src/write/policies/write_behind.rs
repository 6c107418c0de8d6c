//! Write-behind: a write lands in the cache and the key's pending write in
//! the queue, which the flusher writes to the store in batches; a read sees
//! a pending write before the store.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::super::back::{Pending, Report, Reservation, WriteBehind};
use super::super::{AsyncStore, FlushError, KeyGuard, Op, Spawned, Store, WriteError, WriteStats};
use crate::{Cache, Compute, Computed, EntryOptions};

impl<K, V, S, St> Cache<K, V, S, WriteBehind<K, V, St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: Store<K, V>,
{
    /// The latest acknowledged value of `key`: the cached one, else a write
    /// still queued for the store (even if the entry was evicted or expired
    /// from the cache), else the store's, loaded once per key. A queued
    /// delete reads as `None`.
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys): an owned
    /// key is made only for a load.
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller of the same load.
    ///
    /// # Panics
    ///
    /// If the store's `load` panics, in the caller that ran it; a waiting
    /// caller then loads for itself.
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
    /// let cache = Cache::builder()
    ///     .max_capacity(1)
    ///     .write_back(Db::default(), WriteBack::default().max_delay(Duration::MAX))
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.put(2, 20).unwrap();
    /// assert_eq!(cache.len(), 1); // one of the two was evicted...
    /// assert_eq!((cache.store().get(1), cache.store().get(2)), (None, None));
    /// assert_eq!((cache.get(&1), cache.get(&2)), (Ok(Some(10)), Ok(Some(20)))); // ...both read
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, Arc<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let policy = self.policy();
        if let Some(v) = self.get_cached(key) {
            return Ok(Some(v));
        }
        // A queued write answers at once, without waiting for a load of the
        // key that began before it; looked up again inside the flight, as a
        // write may come in between.
        match policy.lookup(key) {
            Some(Pending::Put(v)) => return Ok(Some(v)),
            Some(Pending::Delete) => return Ok(None),
            None => {}
        }
        let fetch = |k: &K| match policy.lookup::<K>(k) {
            Some(Pending::Put(v)) => Ok(Some(v)),
            Some(Pending::Delete) => Ok(None),
            None => policy.store().load(k),
        };
        // The lookup above counted the miss: straight to the load.
        self.load_through(key.to_owned(), fetch, |k, v| {
            policy.store().load_options(k, v)
        })
    }

    /// The values under `keys`, in their order: [`get`](Self::get) for a
    /// page of keys. A key's cached value answers first, then its write
    /// still queued for the store (a queued delete reads as `None`), and the
    /// keys neither has are read by one [`Store::load_all`] call (keys
    /// another caller is loading are waited for, not asked again). A key the
    /// store has no value for is `None`. As [`Cache::get_or_load_all`] for
    /// the rest.
    ///
    /// The queue is read inside each key's load, as `get` reads it: a key
    /// whose load began before its queued write waits for that load to end,
    /// then reads the write. So a key the queue answers counts as a miss
    /// and a load in [`stats`](Cache::stats), and its value is cached with
    /// the store's `load_options` (not the options of a `put_with`).
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller waiting on the keys it
    /// was loading. The store is not called when the queue answers every
    /// key missed.
    ///
    /// # Panics
    ///
    /// If the store's `load_all` panics, in this caller; the callers
    /// waiting on its keys then load them for themselves.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::sync::Mutex;
    /// use std::time::Duration;
    /// use larder::{Cache, Op, Store, WriteBack};
    ///
    /// #[derive(Default)]
    /// struct Db(Mutex<(HashMap<u32, u32>, usize)>); // rows, round trips
    /// impl Store<u32, u32> for Db {
    ///     type Error = String;
    ///     fn load(&self, k: &u32) -> Result<Option<u32>, String> {
    ///         Ok(self.load_all(&[*k])?.pop().map(|(_, v)| v))
    ///     }
    ///     fn load_all(&self, keys: &[u32]) -> Result<Vec<(u32, u32)>, String> {
    ///         let mut db = self.0.lock().unwrap();
    ///         db.1 += 1; // one `WHERE id IN (...)`
    ///         Ok(keys.iter().filter_map(|k| Some((*k, *db.0.get(k)?))).collect())
    ///     }
    ///     fn write(&self, op: &Op<u32, u32>) -> Result<(), String> {
    ///         let mut db = self.0.lock().unwrap();
    ///         match op {
    ///             Op::Put(k, v) => db.0.insert(*k, *v),
    ///             Op::Delete(k) => db.0.remove(k),
    ///         };
    ///         Ok(())
    ///     }
    /// }
    /// let db = Db::default();
    /// db.0.lock().unwrap().0.extend([(1, 10), (2, 20), (3, 30)]);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(db, WriteBack::default().max_delay(Duration::MAX))
    ///     .build()
    ///     .unwrap();
    /// cache.put(4, 40).unwrap();
    /// cache.delete(&2).unwrap();
    /// cache.invalidate_all(); // the cache alone: the queue keeps the write of 4
    /// assert_eq!(cache.get_all([1, 2, 3, 4, 5]), Ok(vec![Some(10), None, Some(30), Some(40), None]));
    /// assert_eq!(cache.store().0.lock().unwrap().1, 1, "keys 1, 3 and 5 in one round trip");
    /// ```
    pub fn get_all(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<V>>, Arc<St::Error>> {
        let policy = self.policy();
        let fetch = |keys: &[K]| {
            let Queued {
                mut found,
                unqueued,
                deleted,
            } = split_queued(policy, keys);
            if !unqueued.is_empty() {
                found.extend(deleted.keep(policy.store().load_all(&unqueued)?));
            }
            Ok(found)
        };
        self.read_through_all(keys, fetch, |k, v| policy.store().load_options(k, v))
    }

    /// Reads `key` from the store again now, for when it changed there
    /// (behind the cache's back): a value found replaces the cached one
    /// (cached with the store's `load_options`; the listener hears
    /// `Replaced`), and `None` takes the cached one out (heard as
    /// `Explicit`). [`Cache::refresh`] for a write-back cache.
    ///
    /// On a write-back cache the key's write still queued for the store
    /// answers first, as for [`get`](Self::get): a queued put is cached
    /// again, a queued delete takes the cached value out.
    ///
    /// - Other callers of the key keep getting the cached value while the
    ///   store is read (a hit, as ever). A key not cached is loaded as `get`
    ///   loads it, callers missing it meanwhile sharing this load.
    /// - The value returned was read after this call began: a load of the
    ///   key already in flight is not joined (a running one goes stale: its
    ///   callers get its value, the cache does not keep it), and this call
    ///   reads the store once it has ended. Refreshes of the key arriving
    ///   while another waits to start share its read.
    /// - As for any load, nothing is cached or taken out if the key was
    ///   written, deleted or invalidated meanwhile; the call still returns
    ///   what it read.
    /// - It counts as a load in [`stats`](Cache::stats) (and in its
    ///   `refreshes` if the key was cached), not as a hit or a miss.
    ///
    /// # Errors
    ///
    /// The store's error, shared with the callers that waited on this
    /// load. The cached value, if any, stays.
    ///
    /// # Panics
    ///
    /// If the store's `load` panics, in this caller; the cached value stays.
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
    /// #     fn remove(&self, k: u32) { self.0.lock().unwrap().remove(&k); }
    /// # }
    /// # impl Store<u32, u32> for Db {
    /// #     type Error = &'static str;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
    /// #     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
    /// #         match op {
    /// #             Op::Put(k, v) => self.set(*k, *v),
    /// #             Op::Delete(k) => self.remove(*k),
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use larder::Cache;
    ///
    /// let db = Db::default();
    /// db.set(1, 10);
    /// let cache = Cache::builder().max_capacity(100).write_back(db, larder::WriteBack::default()).build().unwrap();
    /// assert_eq!(cache.get(&1), Ok(Some(10)));
    /// cache.store().set(1, 11); // behind the cache's back
    /// assert_eq!(cache.get(&1), Ok(Some(10)), "still cached");
    /// assert_eq!(cache.refresh(1), Ok(Some(11)));
    /// assert_eq!(cache.get(&1), Ok(Some(11)));
    /// cache.store().remove(1);
    /// assert_eq!(cache.refresh(1), Ok(None));
    /// assert_eq!(cache.peek(&1), None, "taken out");
    /// ```
    pub fn refresh(&self, key: K) -> Result<Option<V>, Arc<St::Error>> {
        let policy = self.policy();
        let fetch = |k: &K| match policy.lookup::<K>(k) {
            Some(Pending::Put(v)) => Ok(Some(v)),
            Some(Pending::Delete) => Ok(None),
            None => policy.store().load(k),
        };
        self.refresh_through(key, fetch, |k, v| policy.store().load_options(k, v))
    }

    /// Caches `value` and queues its write to the store. A later write to
    /// the same key before this one is sent replaces it in the queue.
    ///
    /// A value the cache refuses (heavier than one shard's share of the
    /// capacity: see [`Cache::try_insert`]; the listener gets it with
    /// [`RemovalCause::Size`](crate::RemovalCause::Size)), or that W-TinyLfu turns away at once
    /// (see [`Cache::insert`]), is queued all the same, and reads find it in
    /// the queue until the store has it.
    ///
    /// # Errors
    ///
    /// [`WriteError::QueueFull`] if the queue is full and the cache was
    /// built with [`Backpressure::Fail`](crate::Backpressure::Fail) (with
    /// `Block`, the call waits for room instead); [`WriteError::Closed`]
    /// after [`close`](Self::close), or once the flusher thread has died (a
    /// panic in a key's or value's `Clone`, `Hash` or `Eq` on it; what it
    /// left unsent is reported by the next `flush`). Nothing is changed
    /// either way.
    ///
    /// # Panics
    ///
    /// If the weigher, the [`Expiry`](crate::Expiry), or the key's `Clone`,
    /// `Hash` or `Eq` panics after the write was queued, the key's cached
    /// copy is dropped,
    /// so that reads find the queued value. An eviction listener that panics on what
    /// the write displaced does so after the write was queued and cached:
    /// that panic is not a failed write.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{Cache, Op, Store, WriteBack};
    /// #[derive(Default)]
    /// struct Db(Mutex<HashMap<u32, u32>>);
    /// impl Store<u32, u32> for Db {
    ///     type Error = std::convert::Infallible;
    ///     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().get(k).copied())
    ///     }
    ///     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
    ///         let mut db = self.0.lock().unwrap();
    ///         match op {
    ///             Op::Put(k, v) => db.insert(*k, *v),
    ///             Op::Delete(k) => db.remove(k),
    ///         };
    ///         Ok(())
    ///     }
    /// }
    /// let cache = Cache::builder()
    ///     .max_capacity(10)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.put(1, 11).unwrap(); // coalesces with the first
    /// assert_eq!(cache.get(&1), Ok(Some(11)));
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().0.lock().unwrap().get(&1), Some(&11));
    /// ```
    pub fn put(&self, key: K, value: V) -> Result<(), WriteError<St::Error>> {
        self.put_inner(key, value, None)
    }

    /// `put` with settings for the cached entry: a time-to-live and tags (see
    /// [`EntryOptions`]). The queued write carries the value alone: when the
    /// cached copy expires or its tag is invalidated before the store has the
    /// write, reads still return it from the queue.
    ///
    /// # Errors
    ///
    /// [`WriteError::QueueFull`] if the queue is full and the cache was
    /// built with [`Backpressure::Fail`](crate::Backpressure::Fail) (with
    /// `Block`, the call waits for room instead); [`WriteError::Closed`]
    /// after [`close`](Self::close) or once the flusher thread has died.
    /// Nothing is changed either way.
    ///
    /// # Panics
    ///
    /// As `put`: if the weigher, the [`Expiry`](crate::Expiry) or the key's
    /// `Clone` panics after the write was queued, the key's cached copy is
    /// dropped.
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
    /// use larder::{Cache, Clock, EntryOptions, WriteBack};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .clock(clock)
    ///     .write_back(Db::default(), WriteBack::default().max_delay(Duration::MAX))
    ///     .build()
    ///     .unwrap();
    /// cache.put_with(1, 10, EntryOptions::new().ttl(Duration::from_secs(60))).unwrap();
    /// time.advance(Duration::from_secs(60));
    /// assert_eq!(cache.peek(&1), None); // the cached copy expired...
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // ...the queued write still reads
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// ```
    pub fn put_with(
        &self,
        key: K,
        value: V,
        options: EntryOptions,
    ) -> Result<(), WriteError<St::Error>> {
        self.put_inner(key, value, Some(&options))
    }

    fn put_inner(
        &self,
        key: K,
        value: V,
        options: Option<&EntryOptions>,
    ) -> Result<(), WriteError<St::Error>> {
        let policy = self.policy();
        let mut write = Some(Pending::Put(value.clone()));
        loop {
            let guard = policy.shared.locks.lock(self.hash(&key));
            if let Some(let_go) = policy.try_accept(&key, &mut write)? {
                self.land_write(key, value, options, guard);
                // What the write replaced goes once the stripe is released.
                drop(let_go);
                return Ok(());
            }
            // Wait for room holding no stripe: `flush` may need it.
            drop(guard);
            policy.wait_for_room(&key);
        }
    }

    /// Drops `key` from the cache and queues its delete from the store. Until
    /// the store has it, `get` reads the key as `None`.
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys).
    ///
    /// # Errors
    ///
    /// [`WriteError::QueueFull`] if the queue is full and the cache was
    /// built with [`Backpressure::Fail`](crate::Backpressure::Fail) (with
    /// `Block`, the call waits for room instead); [`WriteError::Closed`]
    /// after [`close`](Self::close) or once the flusher thread has died.
    /// Nothing is changed either way.
    ///
    /// # Panics
    ///
    /// An eviction listener that panics on the cached copy the delete
    /// dropped does so after the delete was queued: that panic is not a
    /// failed write.
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
    /// let db = Db::default(); // an in-memory `Store`
    /// db.set(1, 10);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(db, WriteBack::default().max_delay(Duration::MAX))
    ///     .build()
    ///     .unwrap();
    /// cache.delete(&1).unwrap();
    /// assert_eq!(cache.get(&1), Ok(None)); // the queued delete reads as `None`
    /// assert_eq!(cache.store().get(1), Some(10)); // not sent yet
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().get(1), None);
    /// ```
    pub fn delete<Q>(&self, key: &Q) -> Result<(), WriteError<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let key = &key.to_owned();
        let policy = self.policy();
        let mut write = Some(Pending::Delete);
        loop {
            let guard = policy.shared.locks.lock(self.hash(key));
            if let Some(let_go) = policy.try_accept(key, &mut write)? {
                self.land_delete::<K, _>(key, guard);
                // What the write replaced goes once the stripe is released.
                drop(let_go);
                return Ok(());
            }
            drop(guard);
            policy.wait_for_room(key);
        }
    }

    /// Reads and rewrites `key` in one step: `f` gets the key's latest
    /// acknowledged value, as [`get`](Self::get) reads it (the cached one,
    /// else a write still queued, else the store's), and says what to do
    /// with it (see [`Compute`]). A [`Put`](Compute::Put) or
    /// [`Remove`](Compute::Remove) is queued and cached as
    /// [`put`](Self::put) and [`delete`](Self::delete) queue and cache
    /// theirs. The call holds the key's lock stripe from the read to the
    /// write, so no other write of the key through this cache (a `put`, a
    /// `delete`, a batch, another `compute`) lands between them: counters
    /// written only through this cache lose no update.
    ///
    /// The call takes a unit of queue room before it reads, and holds it
    /// until its write is queued or `f` decides on none: the write `f`
    /// decides on always fits, and the call never waits for room holding
    /// the stripe. With [`Backpressure::Block`](crate::Backpressure::Block)
    /// it takes the unit even for a dirty key, whose write would coalesce
    /// with one still waiting, and waits for that room first, holding
    /// nothing. With [`Backpressure::Fail`](crate::Backpressure::Fail) and
    /// the queue full, a dirty key whose `put` would get in takes no unit
    /// (its write coalesces with the key's waiting write, or waits behind
    /// its write in flight or failed) and goes on without one.
    ///
    /// The read is a `get`'s without its load: a hit counts as one and moves
    /// a time-to-idle and the eviction order, whatever `f` then does. A
    /// miss reads the queue, then the store, directly, under the stripe,
    /// without sharing the load with other callers or caching what it read;
    /// it counts as a miss, not a load. [`Keep`](Compute::Keep) queues
    /// nothing; nor does a `Remove` of a key that has no value.
    ///
    /// The outcome is [`Cache::compute`]'s, with the value read from the
    /// queue or the store standing for a live entry: [`Computed::Unchanged`],
    /// [`Computed::Replaced`] and [`Computed::Removed`] may carry a value that
    /// was never cached.
    ///
    /// `f` runs holding the stripe and (but as above) a unit of queue room:
    /// it must not write to this cache. A blocking write of a key of the same
    /// stripe panics instead of waiting for itself (an async one that `f`
    /// drives, as with `block_on`, waits for good: the stripe cannot tell
    /// it from another task's write, which waits its turn); one of another key may wait for room
    /// this call holds (with `Block`; with `Fail` it may find the queue
    /// full), or deadlock with another thread's. Nor may it wait for
    /// another thread that writes to this cache: keys share a fixed set of
    /// stripes by hash, so that thread's write, of whatever key, may need
    /// this stripe, and wait for `f`.
    ///
    /// # Errors
    ///
    /// Nothing is changed on any of them:
    /// - [`WriteError::QueueFull`] if the queue has no room for the write and
    ///   the cache was built with
    ///   [`Backpressure::Fail`](crate::Backpressure::Fail), before the read
    ///   (`f` does not run). For a dirty key that went on without room (see
    ///   above), after `f` instead, if its write needs room by then that
    ///   the queue does not have (the flusher stored or gave up on the
    ///   key's writes meanwhile): the write is dropped.
    /// - [`WriteError::Closed`] after [`close`](Self::close) or once the
    ///   flusher thread has died: before the read, or, if the queue stopped
    ///   taking writes while `f` ran, after it (its write is dropped).
    /// - [`WriteError::Store`] with the store's error from the read.
    ///
    /// # Panics
    ///
    /// - If `f`, the store's `load`, or the read's value `Clone` or
    ///   [`Expiry`](crate::Expiry) panics: nothing is changed, and the room
    ///   is given back.
    /// - If the value's or the key's `Clone`, or the key's `Hash` or `Eq`,
    ///   panics as the write is queued: nothing is queued or cached.
    /// - If the weigher, the `Expiry`, the listener, or the key's `Clone`,
    ///   `Hash` or `Eq` panics as the write lands in the cache: as for `put`.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use std::time::Duration;
    /// use larder::{Cache, Compute, Computed, Op, Store, WriteBack};
    ///
    /// #[derive(Default)]
    /// struct Db(Mutex<HashMap<&'static str, u64>>);
    /// impl Store<&'static str, u64> for Db {
    ///     type Error = &'static str;
    ///     fn load(&self, k: &&'static str) -> Result<Option<u64>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().get(k).copied())
    ///     }
    ///     fn write(&self, op: &Op<&'static str, u64>) -> Result<(), Self::Error> {
    ///         let mut db = self.0.lock().unwrap();
    ///         match op {
    ///             Op::Put(k, v) => db.insert(*k, *v),
    ///             Op::Delete(k) => db.remove(k),
    ///         };
    ///         Ok(())
    ///     }
    /// }
    /// let settings = WriteBack::default().max_delay(Duration::MAX);
    /// let cache = Cache::builder().max_capacity(100).write_back(Db::default(), settings).build().unwrap();
    /// let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
    /// assert_eq!(cache.compute("visits", count), Ok(Computed::Inserted(1)));
    /// cache.invalidate_entries_if(|_, _| true); // the cached copy goes; the queued write stays
    /// assert_eq!(cache.compute("visits", count), Ok(Computed::Replaced(2)));
    /// assert_eq!(cache.store().0.lock().unwrap().get("visits"), None, "not sent yet");
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().0.lock().unwrap().get("visits"), Some(&2));
    /// assert_eq!(cache.compute("visits", |_| Compute::Remove), Ok(Computed::Removed(2)));
    /// assert_eq!(cache.get(&"visits"), Ok(None));
    /// ```
    pub fn compute(
        &self,
        key: K,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
    ) -> Result<Computed<V>, WriteError<St::Error>> {
        let policy = self.policy();
        // The stripe first, so that a call from `f` of a key of it panics
        // before it waits for room this call holds; then room, waited for
        // holding nothing: a `flush` may need the stripe.
        let (reservation, guard) = loop {
            let guard = policy.shared.locks.lock(self.hash(&key));
            if let Some(reservation) = policy.try_reserve(&key)? {
                break (reservation, guard);
            }
            drop(guard);
            policy.wait_to_reserve();
        };
        let current = match self.cached_or_queued(&key) {
            Some(current) => current,
            None => policy.store().load(&key).map_err(WriteError::Store)?,
        };
        self.compute_with(key, current, f, reservation, guard)
    }

    /// What a [`compute`](Self::compute) reads before the store: the cached
    /// value, else the queued write (`Some(None)` for a delete); `None`
    /// when the store has the say.
    fn cached_or_queued(&self, key: &K) -> Option<Option<V>> {
        match self.get_cached(key) {
            Some(v) => Some(Some(v)),
            None => match self.policy().lookup::<K>(key) {
                Some(Pending::Put(v)) => Some(Some(v)),
                Some(Pending::Delete) => Some(None),
                None => None,
            },
        }
    }

    /// The rest of a [`compute`](Self::compute) once it has read `current`,
    /// holding its room and the key's stripe: `f`, and the write it decides
    /// on.
    fn compute_with(
        &self,
        key: K,
        current: Option<V>,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
        reservation: Reservation<'_, K, V, St>,
        guard: KeyGuard<'_>,
    ) -> Result<Computed<V>, WriteError<St::Error>> {
        // A blocking write of a key of the stripe from `f` panics instead of
        // waiting for itself, however this call took the stripe.
        match KeyGuard::computing(&[guard.mark()], || f(current.as_ref())) {
            Compute::Keep => Ok(current.map_or(Computed::Absent, Computed::Unchanged)),
            Compute::Remove => {
                let Some(old) = current else {
                    return Ok(Computed::Absent);
                };
                let write = &mut Some(Pending::Delete);
                let (let_go, reservation) =
                    match self.policy().file_reserved(reservation, &key, write) {
                        Ok(filed) => filed,
                        Err(e) => {
                            // Values go once the stripe is released.
                            drop(guard);
                            return Err(e);
                        }
                    };
                self.land_delete::<K, _>(&key, guard);
                // What the write replaced goes once the stripe is released,
                // and room it left free is told of.
                drop(let_go);
                drop(reservation);
                Ok(Computed::Removed(old))
            }
            Compute::Put(value) => self.compute_put(key, value, None, current, reservation, guard),
            Compute::PutWith(value, options) => {
                self.compute_put(key, value, Some(&options), current, reservation, guard)
            }
        }
    }

    /// Queues and caches the write a [`compute`](Self::compute) decided on,
    /// in the room it holds.
    fn compute_put<G>(
        &self,
        key: K,
        value: V,
        options: Option<&EntryOptions>,
        current: Option<V>,
        reservation: Reservation<'_, K, V, St>,
        guard: G,
    ) -> Result<Computed<V>, WriteError<St::Error>> {
        let returned = value.clone();
        let mut write = Some(Pending::Put(value.clone()));
        let (let_go, reservation) = match self.policy().file_reserved(reservation, &key, &mut write)
        {
            Ok(filed) => filed,
            Err(e) => {
                // Values go once the stripe is released.
                drop(guard);
                return Err(e);
            }
        };
        self.land_write(key, value, options, guard);
        drop(let_go);
        drop(reservation);
        Ok(match current {
            Some(_) => Computed::Replaced(returned),
            None => Computed::Inserted(returned),
        })
    }

    /// Queues a batch of puts and deletes, then writes them to the cache:
    /// [`put`](Self::put) and [`delete`](Self::delete) of many keys,
    /// acknowledged together. The queue takes the whole batch or none of it:
    /// a `flush` or `close` that starts after the call returned sends every
    /// write in it, and an error leaves nothing of it queued or cached. A key
    /// given more than once is written once, with its last write, in that
    /// write's place.
    ///
    /// The batch holds its keys' lock stripes while it is queued and lands,
    /// as `put` holds one, so another write of one of its keys comes before
    /// or after it in the queue and the cache alike. The keys land in the
    /// cache one after another: a concurrent reader may see some of them
    /// written and not yet others.
    ///
    /// With [`Backpressure::Block`](crate::Backpressure::Block), the call
    /// waits, holding no stripe, until the queue has room for every key of
    /// the batch not already waiting in it at once; writers of single keys
    /// may take room first meanwhile, and a batch waits as long as they
    /// take each unit as it frees. Room is not kept for a waiting batch:
    /// the writers held back would then wait on whatever the batch waits
    /// on, a deadlock wherever the queue's progress depends on one of them
    /// (a store whose write waits for a thread that is writing to the
    /// cache, an async batch never polled again). Where batches must not
    /// wait long, leave them room: a larger
    /// [`queue_capacity`](crate::WriteBack::queue_capacity), or single
    /// writers that fail when the queue is full.
    ///
    /// # Errors
    ///
    /// Nothing is changed on any of them:
    /// - [`WriteError::BatchTooLarge`] if the batch has more keys than
    ///   [`queue_capacity`](crate::WriteBack::queue_capacity), whatever the
    ///   queue holds (checked first, before [`WriteError::Closed`]): such a
    ///   batch needs more room than the queue has once its keys are clean.
    /// - [`WriteError::QueueFull`] if the queue has no room for the batch
    ///   and the cache was built with
    ///   [`Backpressure::Fail`](crate::Backpressure::Fail).
    /// - [`WriteError::Closed`] after [`close`](Self::close) or once the
    ///   flusher thread has died, even for an empty batch.
    ///
    /// # Panics
    ///
    /// - If a key's `Hash` or `Eq`, or a value's `Clone`, panics as the
    ///   batch is read, before anything is queued.
    /// - If a key's `Clone`, `Hash` or `Eq` panics as the batch is queued:
    ///   the batch's cached copies are dropped, so that reads find the queue
    ///   or the store. A key's `Clone` panics before anything is queued; its
    ///   `Hash` or `Eq` may panic midway, and the writes queued before it
    ///   stay queued (the flusher sends them).
    /// - If the weigher, the [`Expiry`](crate::Expiry), or a key's `Clone`,
    ///   `Hash` or `Eq`, panics as the batch lands in the cache (the queue
    ///   has it): the cached copies of the keys not landed yet are dropped
    ///   before the panic goes on.
    /// - If the listener panics on what the batch displaced, after the
    ///   batch was queued and cached.
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
    /// let db = Db::default(); // an in-memory `Store`
    /// db.set(3, 30);
    /// let settings = WriteBack::default()
    ///     .queue_capacity(4)
    ///     .backpressure(Backpressure::Fail)
    ///     .max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(db, settings)
    ///     .build()
    ///     .unwrap();
    /// cache.write_all([Op::Put(1, 10), Op::Put(2, 20), Op::Delete(3), Op::Put(1, 11)]).unwrap();
    /// assert_eq!(cache.get(&1), Ok(Some(11)));
    /// assert_eq!(cache.get(&3), Ok(None)); // the queued delete
    /// // Three keys are dirty: a batch of two new keys does not fit, and
    /// // none of it is taken.
    /// assert_eq!(cache.put_all([(4, 40), (5, 50)]), Err(WriteError::QueueFull));
    /// assert_eq!(cache.get(&4), Ok(None));
    /// cache.flush().unwrap();
    /// assert_eq!((cache.store().get(1), cache.store().get(3)), (Some(11), None));
    /// cache.put_all([(4, 40), (5, 50)]).unwrap(); // room now
    /// ```
    pub fn write_all(
        &self,
        ops: impl IntoIterator<Item = Op<K, V>>,
    ) -> Result<(), WriteError<St::Error>> {
        let mut batch = self.write_batch_of(ops)?;
        let policy = self.policy();
        loop {
            let guards = policy.shared.locks.lock_all(&batch.hashes);
            if self.accept_batch(&mut batch, guards)? {
                return Ok(());
            }
            // Wait for room holding no stripe, as `put`.
            policy.wait_for_room_all(&batch.keys());
        }
    }

    /// [`write_all`](Self::write_all) of puts: queues many entries at once,
    /// acknowledged together, then caches them.
    ///
    /// # Errors
    ///
    /// As [`write_all`](Self::write_all):
    /// [`WriteError::BatchTooLarge`], [`WriteError::QueueFull`] (with
    /// [`Backpressure::Fail`](crate::Backpressure::Fail)) or
    /// [`WriteError::Closed`]; nothing is changed on any of them.
    ///
    /// # Panics
    ///
    /// As [`write_all`](Self::write_all).
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
    /// use larder::{Cache, WriteBack};
    ///
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_all((0..50).map(|id| (id, id * 2))).unwrap();
    /// assert_eq!(cache.get(&7), Ok(Some(14)));
    /// cache.close().unwrap();
    /// assert_eq!(cache.store().get(49), Some(98));
    /// ```
    pub fn put_all(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), WriteError<St::Error>> {
        self.write_all(entries.into_iter().map(|(k, v)| Op::Put(k, v)))
    }

    /// The batch `write_all` queues: each key's last write, with the hashes
    /// of the keys and the copies of the writes the queue takes (a value's
    /// `Clone` that panics does so here, before anything changed). An empty
    /// batch goes on like any other, to be refused if the cache is closed.
    fn write_batch_of(
        &self,
        ops: impl IntoIterator<Item = Op<K, V>>,
    ) -> Result<WriteBatch<K, V>, WriteError<St::Error>> {
        let (ops, hashes) = self.last_per_key(ops.into_iter().collect());
        self.policy().check_batch(ops.len())?;
        let writes = ops
            .iter()
            .map(|op| {
                Some(match op {
                    Op::Put(_, v) => Pending::Put(v.clone()),
                    Op::Delete(_) => Pending::Delete,
                })
            })
            .collect();
        Ok(WriteBatch {
            ops,
            hashes,
            writes,
        })
    }

    /// Queues `batch` and lands it in the cache, holding `guards` (its
    /// keys' stripes): true once done, false if the queue has no room yet
    /// (the guards are released for the caller to wait).
    fn accept_batch<G>(
        &self,
        batch: &mut WriteBatch<K, V>,
        guards: G,
    ) -> Result<bool, WriteError<St::Error>> {
        let policy = self.policy();
        let keys: BatchKeys<'_, K> = batch.ops.iter().map(Op::key).collect();
        let writes = &mut batch.writes;
        let accepted = catch_unwind(AssertUnwindSafe(|| policy.try_accept_all(&keys, writes)));
        drop(keys);
        match accepted {
            Ok(Ok(Some(let_go))) => {
                self.land_batch(std::mem::take(&mut batch.ops), guards);
                // What the writes replaced goes once the stripes are released.
                drop(let_go);
                Ok(true)
            }
            Ok(Ok(None)) => Ok(false),
            Ok(Err(e)) => Err(e),
            // Part of the batch may be queued: reads must find it there.
            Err(panic) => self.drop_stale_copies(
                batch.ops.iter().map(Op::key),
                crate::store::Removed::new(),
                guards,
                panic,
            ),
        }
    }

    /// Sends every write accepted before this call and returns once the store
    /// took each of them or it was given up on after every retry.
    ///
    /// # Errors
    ///
    /// [`FlushError`] listing the writes given up on since the last report
    /// (each is reported once). Until reported, a failed write's key reads as
    /// its value; the report drops the key from the cache, so that reads go
    /// to the store again (unless a newer write of the key is pending). With
    /// a failure handler
    /// ([`on_write_failure`](crate::CacheBuilder::on_write_failure)), given-up
    /// writes go to the handler instead of into the report.
    ///
    /// # Panics
    ///
    /// If an eviction listener panics on a failed write's cached copy as the
    /// report drops it, after every such copy was dropped; the report then
    /// waits for the next `flush` or `close`.
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
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // acknowledged
    /// let report = cache.flush().unwrap_err();
    /// assert_eq!(report.failed[0].op, Op::Put(1, 10));
    /// assert_eq!(cache.peek(&1), None); // the store never took it
    /// assert!(cache.flush().is_ok()); // each failure is reported once
    /// ```
    pub fn flush(&self) -> Result<(), FlushError<K, V, St::Error>> {
        let report = self.policy().flush();
        self.forget_failed(report)
    }

    /// Refuses further writes ([`WriteError::Closed`]), sends everything
    /// queued, and stops the flusher thread. Reads keep working. Calling it
    /// again is harmless.
    ///
    /// Dropping the last handle of the cache does the same, but waits at most
    /// [`WriteBack::drop_wait`](crate::WriteBack::drop_wait) and can only
    /// print to stderr how many writes failed or were left unsent. A cache
    /// that is never dropped (in a `static`, or leaked) is not flushed when
    /// the process exits: call `close` before it does. What a
    /// crash loses is what was queued: the latest writes of at most
    /// [`queue_capacity`](crate::WriteBack::queue_capacity) keys. A write is
    /// due once it has waited `max_delay`, but is sent only when the flusher
    /// is free, so a slow or failing store keeps writes queued for longer.
    ///
    /// # Errors
    ///
    /// [`FlushError`] listing the writes given up on and not yet reported.
    ///
    /// # Panics
    ///
    /// As [`flush`](Self::flush), if an eviction listener panics on a
    /// failed write's cached copy: the cache is closed all the same, and a
    /// second call reports what the first could not.
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
    /// use larder::{Cache, WriteBack, WriteError};
    ///
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.close().unwrap();
    /// assert_eq!(cache.store().get(1), Some(10)); // everything queued was sent
    /// assert_eq!(cache.put(2, 20), Err(WriteError::Closed));
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // reads keep working
    /// assert!(cache.close().is_ok()); // calling it again is harmless
    /// ```
    pub fn close(&self) -> Result<(), FlushError<K, V, St::Error>> {
        let report = self.policy().close();
        self.forget_failed(report)
    }

    /// Drops the cached copies of reported failed writes whose keys have no
    /// newer write pending: the store never took them.
    fn forget_failed(
        &self,
        report: Result<(), Report<K, V, St::Error>>,
    ) -> Result<(), FlushError<K, V, St::Error>> {
        let Err(mut report) = report else {
            return Ok(());
        };
        let policy = self.policy();
        let mut first_panic = None;
        for (_, failed) in &report.failed {
            let key = failed.op.key();
            // A panicking listener must not cost the other keys their
            // forgetting, nor the caller its report.
            let forgot = catch_unwind(AssertUnwindSafe(|| {
                let guard = policy.shared.locks.lock(self.hash(key));
                if policy.lookup(key).is_none() {
                    self.land_delete::<K, _>(key, guard);
                }
            }));
            if let Err(panic) = forgot {
                first_panic.get_or_insert(panic);
            }
        }
        if let Some(panic) = first_panic {
            // The listener's panic goes on to the caller, as after any
            // removal; the report waits for the next `flush` or `close`.
            policy.settled(report);
            resume_unwind(panic);
        }
        // The queue lets go of the keys it kept while the report was out: a
        // panic of such a key's `Drop` must not cost the caller the report,
        // which cannot go back now that the queue's books are closed on it.
        // It is swallowed, as on the flusher.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            policy.settled(Report {
                failed: Vec::new(),
                hashes: std::mem::take(&mut report.hashes),
            });
        }));
        Err(FlushError {
            failed: report.failed.into_iter().map(|(_, w)| w).collect(),
        })
    }

    /// Counters of the write queue.
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
    /// use larder::{Cache, WriteBack};
    ///
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.delete(&2).unwrap();
    /// cache.flush().unwrap();
    /// let stats = cache.write_stats();
    /// assert_eq!((stats.accepted, stats.stored, stats.failed, stats.dirty), (2, 2, 0, 0));
    /// ```
    pub fn write_stats(&self) -> WriteStats {
        self.policy().stats()
    }

    /// The store behind the cache.
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
    /// use larder::{Cache, WriteBack};
    ///
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// ```
    pub fn store(&self) -> &St {
        self.policy().store()
    }
}

impl<K, V, S, St> Cache<K, V, S, WriteBehind<K, V, St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: Store<K, V>,
{
    /// `put` for async code: a full queue with
    /// [`Backpressure::Block`](crate::Backpressure::Block) suspends the task
    /// instead of blocking its thread. Cancelled while it waits for room, it
    /// changes nothing.
    ///
    /// # Errors
    ///
    /// [`WriteError::QueueFull`] if the queue is full and the cache was
    /// built with [`Backpressure::Fail`](crate::Backpressure::Fail) (with
    /// `Block`, the task waits for room instead); [`WriteError::Closed`]
    /// after [`close`](Self::close) or once the flusher thread has died.
    /// Nothing is changed either way.
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
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let settings = WriteBack::default().queue_capacity(1).max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put_async(1, 10).await.unwrap();
    /// cache.put_async(2, 20).await.unwrap(); // suspended while key 1 is sent
    /// assert_eq!(cache.store().get(1), Some(10));
    /// assert_eq!(cache.peek(&2), Some(20));
    /// cache.close_async().await.unwrap();
    /// # });
    /// ```
    pub async fn put_async(&self, key: K, value: V) -> Result<(), WriteError<St::Error>> {
        self.put_async_inner(key, value, None).await
    }

    /// [`put_with`](Self::put_with) for async code: `put_async` with settings
    /// for the cached entry, a time-to-live and tags. The queued write (what
    /// `get` reads until the store has it) has neither. Cancelled while it
    /// waits for room, it changes nothing.
    ///
    /// # Errors
    ///
    /// As [`put_async`](Self::put_async): [`WriteError::QueueFull`] (with
    /// [`Backpressure::Fail`](crate::Backpressure::Fail)) or
    /// [`WriteError::Closed`]; nothing is changed either way.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{Op, Store};
    /// # #[derive(Default)]
    /// # struct Db(Mutex<HashMap<u32, u32>>);
    /// # impl Db {
    /// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
    /// # }
    /// # impl Store<u32, u32> for Db {
    /// #     type Error = &'static str;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
    /// #     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
    /// #         match op {
    /// #             Op::Put(k, v) => { self.0.lock().unwrap().insert(*k, *v); }
    /// #             Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use larder::{Cache, EntryOptions, WriteBack};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// let shelf = EntryOptions::new().tags(["shelf:1"]);
    /// cache.put_with_async(1, 10, shelf).await.unwrap();
    /// cache.invalidate_tag("shelf:1");
    /// assert_eq!(cache.peek(&1), None); // the cached copy is gone...
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // ...the write is not
    /// cache.close_async().await.unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// # });
    /// ```
    pub async fn put_with_async(
        &self,
        key: K,
        value: V,
        options: EntryOptions,
    ) -> Result<(), WriteError<St::Error>> {
        self.put_async_inner(key, value, Some(options)).await
    }

    async fn put_async_inner(
        &self,
        key: K,
        value: V,
        options: Option<EntryOptions>,
    ) -> Result<(), WriteError<St::Error>> {
        let policy = self.policy();
        let mut write = Some(Pending::Put(value.clone()));
        // Waiting for room (below) files a waker; done or dropped, this
        // future takes it away.
        let waiter = crate::write::Waiter::new();
        let _forget = crate::write::Forget(|| policy.forget(&waiter));
        loop {
            let guard = policy.shared.locks.lock_async(self.hash(&key)).await;
            if let Some(let_go) = policy.try_accept(&key, &mut write)? {
                self.land_write(key, value, options.as_ref(), guard);
                // What the write replaced goes once the stripe is released.
                drop(let_go);
                return Ok(());
            }
            drop(guard);
            std::future::poll_fn(|cx| policy.poll_room(&key, &waiter, cx)).await;
        }
    }

    /// `delete` for async code: a full queue with
    /// [`Backpressure::Block`](crate::Backpressure::Block) suspends the task
    /// instead of blocking its thread. Cancelled while it waits for room, it
    /// changes nothing.
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys).
    ///
    /// # Errors
    ///
    /// [`WriteError::QueueFull`] if the queue is full and the cache was
    /// built with [`Backpressure::Fail`](crate::Backpressure::Fail) (with
    /// `Block`, the task waits for room instead); [`WriteError::Closed`]
    /// after [`close`](Self::close) or once the flusher thread has died.
    /// Nothing is changed either way.
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
    /// use larder::{Cache, WriteBack};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let db = Db::default(); // an in-memory `Store`
    /// db.set(1, 10);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(db, WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.delete_async(&1).await.unwrap();
    /// assert_eq!(cache.peek(&1), None);
    /// cache.flush_async().await.unwrap();
    /// assert_eq!(cache.store().get(1), None);
    /// # });
    /// ```
    pub async fn delete_async<Q>(&self, key: &Q) -> Result<(), WriteError<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let key = &key.to_owned();
        let policy = self.policy();
        let mut write = Some(Pending::Delete);
        // Waiting for room (below) files a waker; done or dropped, this
        // future takes it away.
        let waiter = crate::write::Waiter::new();
        let _forget = crate::write::Forget(|| policy.forget(&waiter));
        loop {
            let guard = policy.shared.locks.lock_async(self.hash(key)).await;
            if let Some(let_go) = policy.try_accept(key, &mut write)? {
                self.land_delete::<K, _>(key, guard);
                // What the write replaced goes once the stripe is released.
                drop(let_go);
                return Ok(());
            }
            drop(guard);
            std::future::poll_fn(|cx| policy.poll_room(key, &waiter, cx)).await;
        }
    }

    /// [`write_all`](Self::write_all) for async code: a full queue with
    /// [`Backpressure::Block`](crate::Backpressure::Block) suspends the task
    /// instead of blocking its thread. Cancelled while it waits for the
    /// stripes or for room, it changes nothing.
    ///
    /// # Errors
    ///
    /// As [`write_all`](Self::write_all): [`WriteError::BatchTooLarge`],
    /// [`WriteError::QueueFull`] (with
    /// [`Backpressure::Fail`](crate::Backpressure::Fail)) or
    /// [`WriteError::Closed`]; nothing is changed on any of them.
    ///
    /// # Panics
    ///
    /// As [`write_all`](Self::write_all).
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
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let settings = WriteBack::default().queue_capacity(2).max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put_async(1, 10).await.unwrap();
    /// // Suspended until key 1 is sent: the queue holds two keys.
    /// cache.write_all_async([Op::Put(2, 20), Op::Put(3, 30)]).await.unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// cache.close_async().await.unwrap();
    /// assert_eq!(cache.store().get(3), Some(30));
    /// # });
    /// ```
    pub async fn write_all_async(
        &self,
        ops: impl IntoIterator<Item = Op<K, V>>,
    ) -> Result<(), WriteError<St::Error>> {
        let mut batch = self.write_batch_of(ops)?;
        let policy = self.policy();
        // Waiting for room (below) files a waker; done or dropped, this
        // future takes it away.
        let waiter = crate::write::Waiter::new();
        let _forget = crate::write::Forget(|| policy.forget(&waiter));
        loop {
            let guards = policy.shared.locks.lock_all_async(&batch.hashes).await;
            if self.accept_batch(&mut batch, guards)? {
                return Ok(());
            }
            let keys = batch.keys();
            std::future::poll_fn(|cx| policy.poll_room_all(&keys, &waiter, cx)).await;
        }
    }

    /// [`put_all`](Self::put_all) for async code, as
    /// [`write_all_async`](Self::write_all_async).
    ///
    /// # Errors
    ///
    /// As [`write_all`](Self::write_all); nothing is changed on any of them.
    ///
    /// # Panics
    ///
    /// As [`write_all`](Self::write_all).
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
    /// use larder::{Cache, WriteBack};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_all_async([(1, 10), (2, 20)]).await.unwrap();
    /// assert_eq!(cache.peek(&2), Some(20));
    /// cache.flush_async().await.unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// # });
    /// ```
    pub async fn put_all_async(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), WriteError<St::Error>> {
        self.write_all_async(entries.into_iter().map(|(k, v)| Op::Put(k, v)))
            .await
    }

    /// `flush`, awaiting instead of blocking the thread: sends every write
    /// accepted before this call and completes once the store took each of
    /// them or it was given up on after every retry.
    ///
    /// # Errors
    ///
    /// [`FlushError`] listing the writes given up on since the last report
    /// (each is reported once); the report drops their keys' cached copies
    /// unless a newer write of the key is pending. With a failure handler,
    /// given-up writes go to it instead.
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
    /// use larder::{Cache, WriteBack};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_async(1, 10).await.unwrap();
    /// cache.flush_async().await.unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// # });
    /// ```
    pub async fn flush_async(&self) -> Result<(), FlushError<K, V, St::Error>> {
        let report = self.policy().flush_async().await;
        self.forget_failed(report)
    }

    /// [`close`](Self::close), awaiting instead of blocking the thread:
    /// refuses further writes, sends everything queued and stops the flusher
    /// thread. Calling it again is harmless.
    ///
    /// # Errors
    ///
    /// [`FlushError`] listing the writes given up on and not yet reported.
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
    /// use larder::{Cache, WriteBack, WriteError};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_async(1, 10).await.unwrap();
    /// cache.close_async().await.unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// assert_eq!(cache.put_async(2, 20).await, Err(WriteError::Closed));
    /// # });
    /// ```
    pub async fn close_async(&self) -> Result<(), FlushError<K, V, St::Error>> {
        let report = self.policy().close_async().await;
        self.forget_failed(report)
    }
}

impl<K, V, S, St> Cache<K, V, S, WriteBehind<K, V, Spawned<St>>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: AsyncStore<K, V>,
{
    /// [`compute`](Self::compute) for a write-back cache over an
    /// [`AsyncStore`]: the room for its write waited for (with
    /// [`Backpressure::Block`](crate::Backpressure::Block)) and the key's
    /// stripe taken without blocking the thread, and a read that reaches the
    /// store awaits its `load`. Holding the stripe from the read to the
    /// write, as `compute` does. The outcome, the counting of the read,
    /// what `f` must not do and the errors are `compute`'s.
    ///
    /// Cancelled before its write is queued (while it waits for room or the
    /// stripe, or during the load), it changes nothing and gives its room
    /// back. A store whose `load` writes a key of the stripe to this cache,
    /// from the same task, panics instead of waiting for itself.
    ///
    /// # Errors
    ///
    /// As [`compute`](Self::compute): [`WriteError::QueueFull`] or
    /// [`WriteError::Closed`] before the read, `Closed` after it if the
    /// queue stopped taking writes meanwhile (and `QueueFull` after it, with
    /// `Fail`, for a dirty key that went on without room and whose writes
    /// the flusher stored or gave up on meanwhile),
    /// [`WriteError::Store`] from the load. Nothing is changed on any of
    /// them.
    ///
    /// # Panics
    ///
    /// As [`compute`](Self::compute).
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use larder::{AsyncStore, Cache, Compute, Computed, Op, Spawned, WriteBack};
    ///
    /// #[derive(Default)]
    /// struct Remote(Mutex<HashMap<u32, u64>>);
    /// impl AsyncStore<u32, u64> for Remote {
    ///     type Error = &'static str;
    ///     async fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().get(k).copied())
    ///     }
    ///     async fn write_batch(&self, ops: &[Op<u32, u64>]) -> Result<(), Self::Error> {
    ///         let mut db = self.0.lock().unwrap();
    ///         for op in ops {
    ///             match op {
    ///                 Op::Put(k, v) => db.insert(*k, *v),
    ///                 Op::Delete(k) => db.remove(k),
    ///             };
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// # let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    /// # let handle = runtime.handle().clone();
    /// # runtime.block_on(async {
    /// let store = Spawned::new(Remote::default(), move |call| {
    ///     handle.spawn(call);
    /// });
    /// let cache = Cache::builder().max_capacity(100).write_back(store, WriteBack::default()).build().unwrap();
    /// let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
    /// assert_eq!(cache.compute_async(7, count).await, Ok(Computed::Inserted(1)));
    /// assert_eq!(cache.compute_async(7, count).await, Ok(Computed::Replaced(2)));
    /// cache.close_async().await.unwrap();
    /// assert_eq!(cache.store().store().0.lock().unwrap().get(&7), Some(&2));
    /// # });
    /// ```
    pub async fn compute_async(
        &self,
        key: K,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
    ) -> Result<Computed<V>, WriteError<St::Error>> {
        let policy = self.policy();
        // Waiting for room (below) files a waker; done or dropped, this
        // future takes it away.
        let waiter = crate::write::Waiter::new();
        let _forget = crate::write::Forget(|| policy.forget(&waiter));
        // The stripe, then room, as `compute`.
        let (reservation, guard) = loop {
            let guard = policy.shared.locks.lock_async(self.hash(&key)).await;
            if let Some(reservation) = policy.try_reserve(&key)? {
                break (reservation, guard);
            }
            drop(guard);
            std::future::poll_fn(|cx| policy.poll_reserve(&waiter, cx)).await;
        };
        let current = match self.cached_or_queued(&key) {
            Some(current) => current,
            None => {
                // Polled as serving the stripe: a store writing a key of it
                // from this task panics instead of waiting for itself.
                let marks = [guard.mark()];
                let mut load = std::pin::pin!(policy.store().store().load(&key));
                let loaded = std::future::poll_fn(|cx| {
                    let waker = std::ptr::from_ref(cx.waker()).addr();
                    KeyGuard::serving(&marks, waker, || load.as_mut().poll(cx))
                })
                .await;
                loaded.map_err(WriteError::Store)?
            }
        };
        self.compute_with(key, current, f, reservation, guard)
    }

    /// `get` for a write-back cache over an [`AsyncStore`]: the cached value,
    /// else the key's pending write, else the store's, awaited (one load per
    /// key at a time).
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys): an owned
    /// key is made only for a load.
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller of the same load.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{AsyncStore, Op};
    /// # #[derive(Default)]
    /// # struct Remote(Mutex<HashMap<u32, u32>>);
    /// # impl Remote {
    /// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
    /// #     fn set(&self, k: u32, v: u32) { self.0.lock().unwrap().insert(k, v); }
    /// # }
    /// # impl AsyncStore<u32, u32> for Remote {
    /// #     type Error = &'static str;
    /// #     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
    /// #     async fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    /// #         for op in ops {
    /// #             match op {
    /// #                 Op::Put(_, v) if *v > 100 => return Err("too large"),
    /// #                 Op::Put(k, v) => self.set(*k, *v),
    /// #                 Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
    /// #             }
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use std::time::Duration;
    /// use larder::{Cache, Spawned, WriteBack};
    ///
    /// # let runtime = tokio::runtime::Runtime::new().unwrap();
    /// # runtime.block_on(async {
    /// let handle = tokio::runtime::Handle::current();
    /// let store = Spawned::new(Remote::default(), move |call| {
    ///     handle.spawn(call);
    /// });
    /// store.store().set(1, 10);
    /// let settings = WriteBack::default().max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(store, settings)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10))); // loaded from the store
    /// cache.delete_async(&1).await.unwrap();
    /// assert_eq!(cache.get_async(&1).await, Ok(None)); // the queued delete
    /// assert_eq!(cache.store().store().get(1), Some(10)); // not sent yet
    /// cache.close_async().await.unwrap();
    /// assert_eq!(cache.store().store().get(1), None);
    /// # });
    /// ```
    pub async fn get_async<Q>(&self, key: &Q) -> Result<Option<V>, Arc<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let policy = self.policy();
        if let Some(v) = self.get_cached(key) {
            return Ok(Some(v));
        }
        // As in `get`.
        match policy.lookup(key) {
            Some(Pending::Put(v)) => return Ok(Some(v)),
            Some(Pending::Delete) => return Ok(None),
            None => {}
        }
        let key = key.to_owned();
        let fetch = async {
            match policy.lookup::<K>(&key) {
                Some(Pending::Put(v)) => Ok(Some(v)),
                Some(Pending::Delete) => Ok(None),
                None => policy.store().store().load(&key).await,
            }
        };
        let options = |k: &K, v: &V| policy.store().load_options(k, v);
        self.load_through_async(&key, fetch, options).await
    }

    /// `get_all` for a write-back cache over an [`AsyncStore`]: the values
    /// under `keys`, in their order, each key's cached value first, then its
    /// write still queued for the store, and the keys neither has read by
    /// one [`AsyncStore::load_all`] call, awaited. Dropping the returned
    /// future while it loads abandons its keys' loads to their waiters. As
    /// [`get_all`](Self::get_all) (on a cache over a [`Store`]) for the rest.
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller waiting on the keys it
    /// was loading.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::time::Duration;
    /// use larder::{AsyncStore, Cache, Op, Spawned, WriteBack};
    ///
    /// #[derive(Default)]
    /// struct Remote(AtomicUsize); // counts its round trips
    /// impl AsyncStore<u32, u32> for Remote {
    ///     type Error = std::io::Error;
    ///     async fn load(&self, key: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.load_all(&[*key]).await?.pop().map(|(_, v)| v))
    ///     }
    ///     async fn load_all(&self, keys: &[u32]) -> Result<Vec<(u32, u32)>, Self::Error> {
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///         Ok(keys.iter().map(|&k| (k, k * 10)).collect())
    ///     }
    ///     async fn write_batch(&self, _ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    ///         Ok(())
    ///     }
    /// }
    /// # let runtime = tokio::runtime::Runtime::new().unwrap();
    /// # runtime.block_on(async {
    /// let handle = tokio::runtime::Handle::current();
    /// let store = Spawned::new(Remote::default(), move |call| {
    ///     handle.spawn(call);
    /// });
    /// let settings = WriteBack::default().max_delay(Duration::MAX);
    /// let cache = Cache::builder().max_capacity(100).write_back(store, settings).build().unwrap();
    /// cache.delete_async(&2).await.unwrap();
    /// assert_eq!(cache.get_all_async([1, 2, 3]).await.unwrap(), [Some(10), None, Some(30)]);
    /// assert_eq!(cache.store().store().0.load(Ordering::Relaxed), 1, "keys 1 and 3 at once");
    /// # });
    /// ```
    pub async fn get_all_async(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<V>>, Arc<St::Error>> {
        let policy = self.policy();
        let fetch = |keys: Vec<K>| {
            let Queued {
                mut found,
                unqueued,
                deleted,
            } = split_queued(policy, &keys);
            async move {
                if !unqueued.is_empty() {
                    found.extend(deleted.keep(policy.store().store().load_all(&unqueued).await?));
                }
                Ok(found)
            }
        };
        let options = |k: &K, v: &V| policy.store().load_options(k, v);
        self.read_through_all_async(keys, fetch, options).await
    }

    /// `refresh` for an [`AsyncStore`]: reads `key` from the store again
    /// now, awaited, and caches what it found (`None` takes the cached
    /// value out). Dropping the returned future while it loads (a cancelled
    /// task) leaves the cached value in place. As `refresh` on a write-back
    /// cache over a [`Store`] for the rest.
    ///
    /// The key's write still queued for the store answers first, as for
    /// [`get_async`](Self::get_async).
    ///
    /// # Errors
    ///
    /// The store's error, shared with the callers that waited on this
    /// load. The cached value, if any, stays.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{AsyncStore, Op};
    /// # #[derive(Default)]
    /// # struct Remote(Mutex<HashMap<u32, u32>>);
    /// # impl Remote {
    /// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
    /// #     fn set(&self, k: u32, v: u32) { self.0.lock().unwrap().insert(k, v); }
    /// # }
    /// # impl AsyncStore<u32, u32> for Remote {
    /// #     type Error = &'static str;
    /// #     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
    /// #     async fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    /// #         for op in ops {
    /// #             match op {
    /// #                 Op::Put(k, v) => self.set(*k, *v),
    /// #                 Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
    /// #             }
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use larder::Cache;
    ///
    /// # let runtime = tokio::runtime::Runtime::new().unwrap();
    /// # runtime.block_on(async {
    /// let handle = tokio::runtime::Handle::current();
    /// let remote = larder::Spawned::new(Remote::default(), move |call| {
    ///     handle.spawn(call);
    /// });
    /// remote.store().set(1, 10);
    /// let cache = Cache::builder().max_capacity(100).write_back(remote, larder::WriteBack::default()).build().unwrap();
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    /// cache.store().store().set(1, 11); // behind the cache's back
    /// assert_eq!(cache.refresh_async(1).await, Ok(Some(11)));
    /// assert_eq!(cache.peek(&1), Some(11));
    /// # });
    /// ```
    pub async fn refresh_async(&self, key: K) -> Result<Option<V>, Arc<St::Error>> {
        let policy = self.policy();
        let fetch = {
            let key = key.clone();
            async move {
                match policy.lookup::<K>(&key) {
                    Some(Pending::Put(v)) => Ok(Some(v)),
                    Some(Pending::Delete) => Ok(None),
                    None => policy.store().store().load(&key).await,
                }
            }
        };
        let options = |k: &K, v: &V| policy.store().load_options(k, v);
        self.refresh_through_async(key, fetch, options).await
    }
}

/// A write-back batch on its way into the queue (see `write_all`).
struct WriteBatch<K, V> {
    /// Each key's last write, in order.
    ops: Vec<Op<K, V>>,
    hashes: Vec<u64>,
    /// The queue's copies of the writes, taken as they are filed.
    writes: Vec<Option<Pending<V>>>,
}

/// A batch's keys, by reference: on the stack for the batches most pages
/// of writes make.
type BatchKeys<'a, K> = smallvec::SmallVec<[&'a K; 16]>;

impl<K, V> WriteBatch<K, V> {
    fn keys(&self) -> BatchKeys<'_, K> {
        self.ops.iter().map(Op::key).collect()
    }
}

/// The keys a bulk read missed, split by what the write-back queue holds.
struct Queued<K, V> {
    /// The keys with a queued put, each with its value.
    found: Vec<(K, V)>,
    /// The keys the queue holds nothing for: the store's to answer.
    unqueued: Vec<K>,
    /// The keys with a queued delete: they read as `None`.
    deleted: Deleted<K>,
}

/// The keys of a bulk read with a queued delete.
struct Deleted<K>(Vec<K>);

impl<K: Hash + Eq> Deleted<K> {
    /// The store's answers, but for these keys: a store may answer keys it
    /// was not asked for (a page of rows), and an answer for a key deleted
    /// since would be cached over the delete.
    fn keep<V>(&self, mut answers: Vec<(K, V)>) -> Vec<(K, V)> {
        if !self.0.is_empty() {
            answers.retain(|(k, _)| !self.0.contains(k));
        }
        answers
    }
}

/// Splits the keys a bulk read missed by what the write-back queue holds
/// for each: its latest acknowledged write (a put as its value, a delete as
/// no answer: the key reads as `None`), or nothing (the store answers).
fn split_queued<K, V, St>(policy: &WriteBehind<K, V, St>, keys: &[K]) -> Queued<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    let mut split = Queued {
        found: Vec::new(),
        unqueued: Vec::new(),
        deleted: Deleted(Vec::new()),
    };
    for key in keys {
        match policy.lookup::<K>(key) {
            Some(Pending::Put(v)) => split.found.push((key.clone(), v)),
            Some(Pending::Delete) => split.deleted.0.push(key.clone()),
            None => split.unqueued.push(key.clone()),
        }
    }
    split
}
