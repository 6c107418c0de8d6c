//! Write-through: a write reaches the store before the cache, under the
//! key's lock, so the two never disagree on an acknowledged write.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::super::key_locks::{Guards, StripeMark};
use super::super::{AsyncStore, FlushError, KeyGuard, Op, Store, WriteError, WriteThrough};
use crate::store::Removed;
use crate::sync::OnDrop;
use crate::{Cache, Compute, Computed, EntryOptions};

impl<K, V, S, St> Cache<K, V, S, WriteThrough<St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: Store<K, V>,
{
    /// The cached value, or the store's, loaded once per key as with
    /// [`ReadThrough`](crate::ReadThrough) (a value the cache refuses is
    /// loaded again at each read, as there).
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
    /// use larder::Cache;
    ///
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Db::default())
    ///     .build()
    ///     .unwrap();
    /// cache.store().set(1, 10); // written by someone else
    /// assert_eq!(cache.peek(&1), None);
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // loaded...
    /// assert_eq!(cache.peek(&1), Some(10)); // ...and cached
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, Arc<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let store = &self.policy().store;
        self.read_through(key, |k| store.load(k), |k, v| store.load_options(k, v))
    }

    /// The values under `keys`, in their order, every key the cache misses
    /// loaded by one [`Store::load_all`] call (keys another caller is
    /// loading are waited for, not asked again): [`get`](Self::get) for a
    /// page of keys. A key the store has no value for is `None`. As
    /// [`Cache::get_or_load_all`] for the rest.
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller waiting on the keys it
    /// was loading.
    ///
    /// # Panics
    ///
    /// If the store's `load_all` panics, in this caller.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::{Arc, Mutex};
    /// # use larder::{Op, Store};
    /// # #[derive(Clone, Default)]
    /// # struct Db(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Db {
    /// #     type Error = &'static str;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
    /// #         match op {
    /// #             Op::Put(k, v) => { self.0.lock().unwrap().insert(*k, *v); }
    /// #             Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use larder::Cache;
    ///
    /// let cache = Cache::builder().max_capacity(100).write_through(Db::default()).build().unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.store().0.lock().unwrap().insert(2, 20); // written by someone else
    /// assert_eq!(cache.get_all([1, 2, 3]), Ok(vec![Some(10), Some(20), None]));
    /// assert_eq!(cache.peek(&2), Some(20)); // loaded and cached
    /// ```
    pub fn get_all(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<V>>, Arc<St::Error>> {
        let store = &self.policy().store;
        self.read_through_all(
            keys,
            |ks| store.load_all(ks),
            |k, v| store.load_options(k, v),
        )
    }

    /// Reads `key` from the store again now, for when it changed there
    /// (behind the cache's back): a value found replaces the cached one
    /// (cached with the store's `load_options`; the listener hears
    /// `Replaced`), and `None` takes the cached one out (heard as
    /// `Explicit`). [`Cache::refresh`] for a write-through cache.
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
    /// let cache = Cache::builder().max_capacity(100).write_through(db).build().unwrap();
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
        self.refresh_from(&*self.policy().store, key)
    }

    /// Writes `value` to the store, then to the cache, and returns once the
    /// store took it. Writes to one key are serialized across the two steps,
    /// so the cache and the store end with the same last write (unless the
    /// cache refuses it, below).
    ///
    /// The cache may refuse the value after the store took it: an entry
    /// heavier than one shard's share of the capacity (see
    /// [`Cache::try_insert`]) is not cached. The listener then gets it with
    /// [`RemovalCause::Size`](crate::RemovalCause::Size) (and the key's previous cached value with
    /// [`RemovalCause::Replaced`](crate::RemovalCause::Replaced)), `put` still returns `Ok(())`, and reads
    /// load the value from the store. An entry whose time-to-live is zero is
    /// likewise dropped, with [`RemovalCause::Expired`](crate::RemovalCause::Expired), and so is one
    /// W-TinyLfu turns away at once, heavier than its admission window (see
    /// [`Cache::insert`]), with `Size`.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the cache is unchanged.
    ///
    /// # Panics
    ///
    /// If the store panics: it may have taken the write before it did, so
    /// the key's cached copy is dropped before the panic goes on, and the next
    /// read asks the store (as `put_async` does). If the
    /// weigher, the [`Expiry`](crate::Expiry), or the key's `Clone`, `Hash`
    /// or `Eq` panics, the store has the write and the key's cached copy is
    /// dropped, so that reads load the new value. An eviction listener that panics on what
    /// the write displaced does so after the write landed in the store and
    /// the cache: that panic is not a failed write.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{Cache, Op, Store, WriteError};
    /// #[derive(Default)]
    /// struct Db(Mutex<HashMap<u32, u32>>);
    /// impl Store<u32, u32> for Db {
    ///     type Error = &'static str;
    ///     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().get(k).copied())
    ///     }
    ///     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
    ///         match op {
    ///             Op::Put(_, v) if *v > 100 => Err("too large"),
    ///             Op::Put(k, v) => { self.0.lock().unwrap().insert(*k, *v); Ok(()) }
    ///             Op::Delete(k) => { self.0.lock().unwrap().remove(k); Ok(()) }
    ///         }
    ///     }
    /// }
    /// let cache = Cache::builder().max_capacity(10).write_through(Db::default()).build().unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert_eq!(cache.store().0.lock().unwrap().get(&1), Some(&10));
    /// assert_eq!(cache.put(1, 500), Err(WriteError::Store("too large")));
    /// assert_eq!(cache.get(&1), Ok(Some(10)));
    /// ```
    ///
    /// A value too heavy for the cache is stored all the same:
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
    /// use std::sync::{Arc as Shared, Mutex as Log};
    /// use larder::{Cache, RemovalCause};
    ///
    /// let causes = Shared::new(Log::new(Vec::new()));
    /// let log = causes.clone();
    /// let cache = Cache::builder()
    ///     .max_capacity(50) // one shard: an entry may weigh at most 50
    ///     .weigher(|_, v: &u32| *v)
    ///     .eviction_listener(move |_, _, cause| log.lock().unwrap().push(cause))
    ///     .write_through(Db::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert_eq!(cache.put(1, 60), Ok(())); // too heavy for the cache
    /// assert_eq!(*causes.lock().unwrap(), [RemovalCause::Replaced, RemovalCause::Size]);
    /// assert_eq!((cache.store().get(1), cache.peek(&1)), (Some(60), None));
    /// assert_eq!(cache.get(&1), Ok(Some(60))); // read from the store
    /// ```
    pub fn put(&self, key: K, value: V) -> Result<(), WriteError<St::Error>> {
        self.put_inner(key, value, None)
    }

    /// `put` with settings for the cached entry: a time-to-live and tags (see
    /// [`EntryOptions`]). The store gets the value alone; when the cached copy
    /// expires or its tag is invalidated, the next `get` loads it again. As
    /// with `put`, a value the cache refuses (too heavy, or a zero
    /// time-to-live) is still stored.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the cache is unchanged.
    ///
    /// # Panics
    ///
    /// If the store panics: it may have taken the write, so the key's cached
    /// copy is dropped before the panic goes on. If the weigher, the
    /// [`Expiry`](crate::Expiry), or the key's `Clone`, `Hash` or `Eq`
    /// panics, the store has the write and the key's cached copy is dropped. An eviction listener that panics on what
    /// the write displaced does so after the write landed in the store and
    /// the cache: that panic is not a failed write.
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
    /// use larder::{Cache, Clock, EntryOptions};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .clock(clock)
    ///     .write_through(Db::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_with(1, 10, EntryOptions::new().ttl(Duration::from_secs(60))).unwrap();
    /// time.advance(Duration::from_secs(60));
    /// assert_eq!(cache.peek(&1), None); // the cached copy expired...
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // ...the store's is loaded again
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
        let guard = Guards::from_buf([policy.locks.lock(self.hash(&key))]);
        let op = [Op::Put(key, value)];
        let (written, guard) = self.store_call_sync(&op, guard, || policy.store.write(&op[0]));
        written.map_err(WriteError::Store)?;
        let [Op::Put(key, value)] = op else {
            unreachable!("the op built above")
        };
        self.land_write(key, value, options, guard);
        Ok(())
    }

    /// Deletes `key` from the store, then from the cache.
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys).
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the cache is unchanged.
    ///
    /// # Panics
    ///
    /// If the store panics: the key's cached copy is dropped before the panic
    /// goes on, as with `put`.
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
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Db::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.delete(&1).unwrap();
    /// assert_eq!((cache.store().get(1), cache.peek(&1)), (None, None));
    /// assert_eq!(cache.get(&1), Ok(None));
    /// ```
    pub fn delete<Q>(&self, key: &Q) -> Result<(), WriteError<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let policy = self.policy();
        let guard = Guards::from_buf([policy.locks.lock(self.hash(key))]);
        let op = [Op::Delete(key.to_owned())];
        let (written, guard) = self.store_call_sync(&op, guard, || policy.store.write(&op[0]));
        written.map_err(WriteError::Store)?;
        self.land_delete::<K, _>(op[0].key(), guard);
        Ok(())
    }

    /// Writes a batch of puts and deletes to the store with one
    /// [`Store::write_batch`] call, then to the cache: [`put`](Self::put)
    /// and [`delete`](Self::delete) of many keys for one store round trip.
    /// A key given more than once is written once, with its last write
    /// (a store takes at most one write per key in a batch); the batch is
    /// the keys' last writes in their order.
    ///
    /// The batch holds its keys' lock stripes across the store call, as
    /// `put` holds one, so that another write of one of its keys lands
    /// before or after it, in the store and the cache alike. Writes of
    /// other keys sharing those stripes wait meanwhile.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error. The store may have
    /// taken part of the batch (the default `write_batch` stops at its first
    /// failing write): the batch's keys are dropped from the cache, so that
    /// reads load what the store holds.
    ///
    /// # Panics
    ///
    /// - If the store panics: the batch's keys' cached copies are dropped
    ///   before the panic goes on.
    /// - If a key's `Hash` or `Eq` panics as the batch is read: before
    ///   anything is written.
    /// - If the weigher, or a key's `Clone`, `Hash` or `Eq`, panics as the
    ///   batch lands in the cache (the store has it): the copies of the
    ///   keys not landed yet are dropped before the panic goes on.
    /// - If the listener panics, after the batch, as for a `put`; on a
    ///   failed batch its panic is raised instead of the store's error.
    /// - If called from within this cache's store call for a key of one of
    ///   the batch's lock stripes (the [`Store`] docs forbid it), instead of
    ///   waiting for itself.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use larder::{Cache, Op, Store};
    ///
    /// #[derive(Default)]
    /// struct Db(Mutex<(HashMap<u32, u32>, usize)>); // rows, round trips
    /// impl Store<u32, u32> for Db {
    ///     type Error = &'static str;
    ///     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().0.get(k).copied())
    ///     }
    ///     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
    ///         self.write_batch(std::slice::from_ref(op))
    ///     }
    ///     fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    ///         let mut db = self.0.lock().unwrap();
    ///         db.1 += 1; // one transaction
    ///         for op in ops {
    ///             match op {
    ///                 Op::Put(k, v) => db.0.insert(*k, *v),
    ///                 Op::Delete(k) => db.0.remove(k),
    ///             };
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// let cache = Cache::builder().max_capacity(100).write_through(Db::default()).build().unwrap();
    /// cache.put(3, 30).unwrap();
    /// cache.write_all([Op::Put(1, 10), Op::Put(2, 20), Op::Delete(3), Op::Put(1, 11)]).unwrap();
    /// assert_eq!((cache.peek(&1), cache.peek(&2), cache.peek(&3)), (Some(11), Some(20), None));
    /// let db = cache.store().0.lock().unwrap();
    /// assert_eq!(db.0, HashMap::from([(1, 11), (2, 20)]));
    /// assert_eq!(db.1, 2, "one round trip for the put, one for the batch");
    /// ```
    pub fn write_all(
        &self,
        ops: impl IntoIterator<Item = Op<K, V>>,
    ) -> Result<(), WriteError<St::Error>> {
        let (ops, hashes) = self.last_per_key(ops.into_iter().collect());
        if ops.is_empty() {
            return Ok(());
        }
        let policy = self.policy();
        let guards = policy.locks.lock_all(&hashes);
        let (written, guards) =
            self.store_call_sync(&ops, guards, || policy.store.write_batch(&ops));
        self.settle_batch(ops, guards, written)
    }

    /// [`write_all`](Self::write_all) of puts: stores many entries with one
    /// [`Store::write_batch`] call, then caches them.
    ///
    /// # Errors
    ///
    /// As [`write_all`](Self::write_all): the store's error, the keys then
    /// dropped from the cache.
    ///
    /// # Panics
    ///
    /// As [`write_all`](Self::write_all).
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use larder::{Cache, Op, Store};
    ///
    /// #[derive(Default)]
    /// struct Db(Mutex<(HashMap<u32, u32>, usize)>); // rows, round trips
    /// impl Store<u32, u32> for Db {
    ///     type Error = &'static str;
    ///     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().0.get(k).copied())
    ///     }
    ///     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
    ///         self.write_batch(std::slice::from_ref(op))
    ///     }
    ///     fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    ///         let mut db = self.0.lock().unwrap();
    ///         db.1 += 1; // one transaction
    ///         for op in ops {
    ///             match op {
    ///                 Op::Put(k, v) => db.0.insert(*k, *v),
    ///                 Op::Delete(k) => db.0.remove(k),
    ///             };
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// let cache = Cache::builder().max_capacity(100).write_through(Db::default()).build().unwrap();
    /// cache.put_all((0..50).map(|id| (id, id * 2))).unwrap();
    /// assert_eq!(cache.get(&7), Ok(Some(14)));
    /// assert_eq!(cache.store().0.lock().unwrap().1, 1, "fifty rows, one round trip");
    /// ```
    pub fn put_all(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), WriteError<St::Error>> {
        self.write_all(entries.into_iter().map(|(k, v)| Op::Put(k, v)))
    }

    /// Reads and rewrites `key` in one step, through the store: `f` gets the
    /// key's value (the cached one, else the store's) and says what to do
    /// with it (see [`Compute`]); a [`Put`](Compute::Put) or
    /// [`Remove`](Compute::Remove) goes to the store, then to the cache, as
    /// [`put`](Self::put) and [`delete`](Self::delete) send theirs. The
    /// call holds the key's lock stripe from the read to the write, so no
    /// other write of the key through this cache (a `put`, a `delete`, a
    /// batch, another `compute`) lands between them: counters kept in the
    /// store and written only through this cache lose no update. (A write
    /// made to the store behind the cache is not seen while a copy of the
    /// key is cached, as for `get`.)
    ///
    /// The read is a `get`'s: a hit counts as one and moves a time-to-idle
    /// and the eviction order, whatever `f` then does. A miss reads the
    /// store directly, under the stripe, without sharing the load with
    /// other callers or caching what it read; it counts as a miss, not a
    /// load. [`Keep`](Compute::Keep) calls the store for nothing more; so
    /// does a `Remove` of a key neither the cache nor the store has.
    ///
    /// The outcome is [`Cache::compute`]'s, with the value read from the
    /// store standing for a live entry: [`Computed::Unchanged`],
    /// [`Computed::Replaced`] and [`Computed::Removed`] may carry a value
    /// that was never cached, and the listener hears only of cached copies
    /// replaced or removed.
    ///
    /// `f` runs holding the stripe: it must not write to this cache (a
    /// blocking write of a key of the same stripe panics instead of waiting
    /// for itself, while an async one that `f` drives, as with `block_on`,
    /// waits for good: the stripe cannot tell it from another task's write,
    /// which waits its turn; one of another stripe may deadlock with
    /// another thread's). Nor may it
    /// wait for another thread that writes to this cache: keys share a
    /// fixed set of stripes by hash, so that thread's write, of whatever
    /// key, may need this stripe, and wait for `f`.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error, from the read or the
    /// write; nothing is changed then.
    ///
    /// # Panics
    ///
    /// - If `f`, the store's `load`, or the read's value `Clone` or
    ///   [`Expiry`](crate::Expiry) panics: nothing is changed.
    /// - If the store panics on the write, it may have taken it: the key's
    ///   cached copy is dropped before the panic goes on, as for `put`.
    /// - If the weigher, the `Expiry`, the listener, or the key's `Clone`,
    ///   `Hash` or `Eq` panics as the write lands: as for `put`.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use larder::{Cache, Compute, Computed, Op, Store};
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
    /// let cache = Cache::builder().max_capacity(100).write_through(Db::default()).build().unwrap();
    /// let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
    /// assert_eq!(cache.compute("visits", count), Ok(Computed::Inserted(1)));
    /// assert_eq!(cache.compute("visits", count), Ok(Computed::Replaced(2)));
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
        let guard = Guards::from_buf([policy.locks.lock(self.hash(&key))]);
        let current = match self.get_cached(&key) {
            Some(v) => Some(v),
            None => policy.store.load(&key).map_err(WriteError::Store)?,
        };
        // A blocking write of a key of the stripe from `f` panics instead of
        // waiting for itself, however this call took the stripe.
        let (value, options) = match KeyGuard::computing(&[guard[0].mark()], || f(current.as_ref()))
        {
            Compute::Keep => {
                return Ok(current.map_or(Computed::Absent, Computed::Unchanged));
            }
            Compute::Remove => {
                let Some(old) = current else {
                    return Ok(Computed::Absent);
                };
                let op = [Op::Delete(key)];
                let (written, guard) =
                    self.store_call_sync(&op, guard, || policy.store.write(&op[0]));
                written.map_err(WriteError::Store)?;
                self.land_delete::<K, _>(op[0].key(), guard);
                return Ok(Computed::Removed(old));
            }
            Compute::Put(value) => (value, None),
            Compute::PutWith(value, options) => (value, Some(options)),
        };
        let returned = value.clone();
        let op = [Op::Put(key, value)];
        let (written, guard) = self.store_call_sync(&op, guard, || policy.store.write(&op[0]));
        written.map_err(WriteError::Store)?;
        let [Op::Put(key, value)] = op else {
            unreachable!("the op built above")
        };
        self.land_write(key, value, options.as_ref(), guard);
        Ok(match current {
            Some(_) => Computed::Replaced(returned),
            None => Computed::Inserted(returned),
        })
    }

    /// Runs a write-through store `call` for `ops`, holding their keys'
    /// stripes. If the store panics it may or may not have the writes: the
    /// keys' cached copies are dropped, the stripes released, the listener
    /// told (its own panic is not raised over the store's), and the store's
    /// panic goes on.
    fn store_call_sync<'a, T>(
        &'a self,
        ops: &[Op<K, V>],
        guards: Guards<'a>,
        call: impl FnOnce() -> T,
    ) -> (T, Guards<'a>) {
        match catch_unwind(AssertUnwindSafe(call)) {
            Ok(out) => (out, guards),
            Err(panic) => {
                self.drop_stale_copies(ops.iter().map(Op::key), Removed::new(), guards, panic)
            }
        }
    }

    /// Nothing is ever pending with this policy.
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches write-back's.
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
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Db::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert_eq!(cache.store().get(1), Some(10)); // stored already
    /// assert!(cache.flush().is_ok());
    /// ```
    pub fn flush(&self) -> Result<(), FlushError<K, V, St::Error>> {
        Ok(())
    }
}

impl<K, V, S, St> Cache<K, V, S, WriteThrough<St>> {
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
    /// use larder::Cache;
    ///
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Db::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// ```
    pub fn store(&self) -> &St {
        &self.policy().store
    }
}

impl<K, V, S, St> Cache<K, V, S, WriteThrough<St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: AsyncStore<K, V>,
{
    /// `get` for an [`AsyncStore`], as with read-through: the cached value,
    /// or the store's, loaded once however many callers miss on `key`
    /// together.
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
    /// use larder::Cache;
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// cache.store().set(1, 10); // written by someone else
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    /// assert_eq!(cache.peek(&1), Some(10));
    /// # });
    /// ```
    pub async fn get_async<Q>(&self, key: &Q) -> Result<Option<V>, Arc<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let store = &self.policy().store;
        // The store's call is made only by the caller that leads the load:
        // a store may start its request when `load` is called, not when the
        // future is first polled.
        let options = |k: &K, v: &V| store.load_options(k, v);
        if let Some(v) = self.get_cached(key) {
            return Ok(Some(v));
        }
        let key = key.to_owned();
        self.load_through_async(&key, async { store.load(&key).await }, options)
            .await
    }

    /// `get_all` for an [`AsyncStore`]: the values under `keys`, in their
    /// order, every key the cache misses loaded by one
    /// [`AsyncStore::load_all`] call (keys another caller is loading are
    /// waited for, not asked again). A key the store has no value for is
    /// `None`. Dropping the returned future while it loads abandons its
    /// keys' loads to their waiters. As [`Cache::get_or_load_all`] for the
    /// rest.
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller waiting on the keys it
    /// was loading.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use larder::{AsyncStore, Cache, Op};
    ///
    /// #[derive(Default)]
    /// struct Remote(AtomicUsize); // counts its round trips
    /// impl AsyncStore<u32, u32> for Remote {
    ///     type Error = std::io::Error;
    ///     async fn load(&self, key: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.load_all(&[*key]).await?.pop().map(|(_, v)| v))
    ///     }
    ///     async fn load_all(&self, keys: &[u32]) -> Result<Vec<(u32, u32)>, Self::Error> {
    ///         self.0.fetch_add(1, Ordering::Relaxed); // one `WHERE id IN (...)`
    ///         Ok(keys.iter().filter(|&&k| k != 0).map(|&k| (k, k * 10)).collect())
    ///     }
    ///     async fn write_batch(&self, _ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    ///         Ok(())
    ///     }
    /// }
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = Cache::builder().max_capacity(100).write_through(Remote::default()).build().unwrap();
    /// assert_eq!(cache.get_all_async([0, 1, 2]).await.unwrap(), [None, Some(10), Some(20)]);
    /// assert_eq!(cache.get_all_async([1, 2]).await.unwrap(), [Some(10), Some(20)]);
    /// assert_eq!(cache.store().0.load(Ordering::Relaxed), 1, "cached after one round trip");
    /// # });
    /// ```
    pub async fn get_all_async(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<V>>, Arc<St::Error>> {
        let store = &self.policy().store;
        let fetch = |keys: Vec<K>| async move { store.load_all(&keys).await };
        self.read_through_all_async(keys, fetch, |k, v| store.load_options(k, v))
            .await
    }

    /// `refresh` for an [`AsyncStore`]: reads `key` from the store again
    /// now, awaited, and caches what it found (`None` takes the cached
    /// value out). Dropping the returned future while it loads (a cancelled
    /// task) leaves the cached value in place. As `refresh` on a write-through
    /// cache over a [`Store`] for the rest.
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
    /// let remote = Remote::default();
    /// remote.set(1, 10);
    /// let cache = Cache::builder().max_capacity(100).write_through(remote).build().unwrap();
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    /// cache.store().set(1, 11); // behind the cache's back
    /// assert_eq!(cache.refresh_async(1).await, Ok(Some(11)));
    /// assert_eq!(cache.peek(&1), Some(11));
    /// # });
    /// ```
    pub async fn refresh_async(&self, key: K) -> Result<Option<V>, Arc<St::Error>> {
        self.refresh_from_async(&*self.policy().store, key).await
    }

    /// `put` for an [`AsyncStore`]: writes the store, then the cache; writes
    /// of one key, sync or async, are serialized. If the task is cancelled
    /// while the store call runs, the store may or may not have the write, so
    /// the key's cached copy is dropped and the next read asks the store.
    /// Until then the call holds its key's lock stripe (one of 1,024, shared
    /// with other keys): a future kept alive but no longer polled mid-call
    /// keeps every write of that stripe waiting, so drop one you will not
    /// poll.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the cache is unchanged.
    ///
    /// # Panics
    ///
    /// If the store panics (its future's `Drop` too): as with a cancellation,
    /// the store may have the write, so the key's cached copy is dropped
    /// before the panic goes on.
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
    /// use larder::{Cache, WriteError};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_async(1, 10).await.unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// // This store refuses values over 100: the cache is unchanged.
    /// assert_eq!(cache.put_async(1, 500).await, Err(WriteError::Store("too large")));
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    /// # });
    /// ```
    pub async fn put_async(&self, key: K, value: V) -> Result<(), WriteError<St::Error>> {
        self.put_async_inner(key, value, None).await
    }

    /// [`put_with`](Self::put_with) for an [`AsyncStore`]: `put_async` with
    /// settings for the cached entry, a time-to-live and tags. The store gets
    /// the value alone. Cancelled or panicking, as `put_async`.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the cache is unchanged.
    ///
    /// # Panics
    ///
    /// If the store panics: the key's cached copy is dropped before the panic
    /// goes on, as with `put_async`.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{AsyncStore, Op};
    /// # #[derive(Default)]
    /// # struct Remote(Mutex<HashMap<u32, u32>>);
    /// # impl Remote {
    /// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
    /// # }
    /// # impl AsyncStore<u32, u32> for Remote {
    /// #     type Error = &'static str;
    /// #     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
    /// #     async fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    /// #         for op in ops {
    /// #             match op {
    /// #                 Op::Put(k, v) => { self.0.lock().unwrap().insert(*k, *v); }
    /// #                 Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
    /// #             }
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use larder::{Cache, EntryOptions};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// let shelf = EntryOptions::new().tags(["shelf:1"]);
    /// cache.put_with_async(1, 10, shelf).await.unwrap();
    /// cache.invalidate_tag("shelf:1");
    /// assert_eq!(cache.peek(&1), None); // the cached copy is gone...
    /// assert_eq!(cache.store().get(1), Some(10)); // ...the store keeps the write
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
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
        let guard = Guards::from_buf([policy.locks.lock_async(self.hash(&key)).await]);
        let op = [Op::Put(key, value)];
        let (written, guard) = self
            .store_call(&op, guard, || policy.store.write_batch(&op))
            .await;
        written.map_err(WriteError::Store)?;
        let [Op::Put(key, value)] = op else {
            unreachable!("the op built above")
        };
        self.land_write(key, value, options.as_ref(), guard);
        Ok(())
    }

    /// `delete` for an [`AsyncStore`]: deletes from the store, then from the
    /// cache. If the task is cancelled while the store call runs, the key's
    /// cached copy is dropped, as with `put_async`.
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys).
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the cache is unchanged.
    ///
    /// # Panics
    ///
    /// If the store panics: the key's cached copy is dropped before the panic
    /// goes on.
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
    /// use larder::Cache;
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_async(1, 10).await.unwrap();
    /// cache.delete_async(&1).await.unwrap();
    /// assert_eq!((cache.store().get(1), cache.peek(&1)), (None, None));
    /// # });
    /// ```
    pub async fn delete_async<Q>(&self, key: &Q) -> Result<(), WriteError<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let policy = self.policy();
        let guard = Guards::from_buf([policy.locks.lock_async(self.hash(key)).await]);
        let op = [Op::Delete(key.to_owned())];
        let (written, guard) = self
            .store_call(&op, guard, || policy.store.write_batch(&op))
            .await;
        written.map_err(WriteError::Store)?;
        self.land_delete::<K, _>(op[0].key(), guard);
        Ok(())
    }

    /// `write_all` for an [`AsyncStore`]: a batch of puts and deletes
    /// written to the store with one awaited `write_batch` call, then to the
    /// cache. If the task is cancelled while the store call runs, the
    /// batch's keys' cached copies are dropped, as with `put_async`. As
    /// `write_all` on a cache over a [`Store`] for the rest.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the batch's keys are
    /// then dropped from the cache (the store may have taken part of it).
    ///
    /// # Panics
    ///
    /// As [`write_all`](Self::write_all) on a cache over a [`Store`].
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use larder::{AsyncStore, Cache, Op};
    ///
    /// #[derive(Default)]
    /// struct Remote(Mutex<(HashMap<u32, u32>, usize)>); // rows, round trips
    /// impl AsyncStore<u32, u32> for Remote {
    ///     type Error = &'static str;
    ///     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().0.get(k).copied())
    ///     }
    ///     async fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    ///         let mut remote = self.0.lock().unwrap();
    ///         remote.1 += 1;
    ///         for op in ops {
    ///             match op {
    ///                 Op::Put(k, v) => remote.0.insert(*k, *v),
    ///                 Op::Delete(k) => remote.0.remove(k),
    ///             };
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = Cache::builder().max_capacity(100).write_through(Remote::default()).build().unwrap();
    /// cache.write_all_async([Op::Put(1, 10), Op::Put(2, 20), Op::Delete(3)]).await.unwrap();
    /// assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(10), Some(20)));
    /// assert_eq!(cache.store().0.lock().unwrap().1, 1);
    /// # });
    /// ```
    pub async fn write_all_async(
        &self,
        ops: impl IntoIterator<Item = Op<K, V>>,
    ) -> Result<(), WriteError<St::Error>> {
        let (ops, hashes) = self.last_per_key(ops.into_iter().collect());
        if ops.is_empty() {
            return Ok(());
        }
        let policy = self.policy();
        let guards = policy.locks.lock_all_async(&hashes).await;
        let (written, guards) = self
            .store_call(&ops, guards, || policy.store.write_batch(&ops))
            .await;
        self.settle_batch(ops, guards, written)
    }

    /// [`write_all_async`](Self::write_all_async) of puts: stores many
    /// entries with one awaited `write_batch` call, then caches them.
    ///
    /// # Errors
    ///
    /// As [`write_all_async`](Self::write_all_async).
    ///
    /// # Panics
    ///
    /// As [`write_all_async`](Self::write_all_async).
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use larder::{AsyncStore, Cache, Op};
    ///
    /// #[derive(Default)]
    /// struct Remote(Mutex<(HashMap<u32, u32>, usize)>); // rows, round trips
    /// impl AsyncStore<u32, u32> for Remote {
    ///     type Error = &'static str;
    ///     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().0.get(k).copied())
    ///     }
    ///     async fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
    ///         let mut remote = self.0.lock().unwrap();
    ///         remote.1 += 1;
    ///         for op in ops {
    ///             match op {
    ///                 Op::Put(k, v) => remote.0.insert(*k, *v),
    ///                 Op::Delete(k) => remote.0.remove(k),
    ///             };
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = Cache::builder().max_capacity(100).write_through(Remote::default()).build().unwrap();
    /// cache.put_all_async((0..50).map(|id| (id, id * 2))).await.unwrap();
    /// assert_eq!(cache.get_async(&7).await, Ok(Some(14)));
    /// assert_eq!(cache.store().0.lock().unwrap().1, 1, "fifty rows, one round trip");
    /// # });
    /// ```
    pub async fn put_all_async(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), WriteError<St::Error>> {
        self.write_all_async(entries.into_iter().map(|(k, v)| Op::Put(k, v)))
            .await
    }

    /// [`compute`](Self::compute) for an [`AsyncStore`]: reads and rewrites
    /// `key` in one step, through the store, holding the key's lock stripe
    /// from the read to the write (waited for without blocking the thread).
    /// `f` gets the cached value, else the store's `load`; a
    /// [`Put`](Compute::Put) or [`Remove`](Compute::Remove) goes to the
    /// store's `write_batch`, then to the cache, as
    /// [`put_async`](Self::put_async) and [`delete_async`](Self::delete_async)
    /// send theirs. The outcome, the counting of the read and what `f` must
    /// not do are `compute`'s.
    ///
    /// Cancelled while waiting for the stripe or during the load, it
    /// changes nothing; cancelled during the write, the store may have
    /// taken it, so the key's cached copy is dropped, as for `put_async`. A
    /// store whose `load` or `write_batch` writes a key of the stripe to
    /// this cache, from the same task, panics instead of waiting for itself.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error, from the read or the
    /// write; nothing is changed then.
    ///
    /// # Panics
    ///
    /// As [`compute`](Self::compute); a store panicking in its `load` (or
    /// its future's `Drop`) changes nothing.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// use larder::{AsyncStore, Cache, Compute, Computed, Op};
    ///
    /// #[derive(Default)]
    /// struct Remote(Mutex<HashMap<&'static str, u64>>);
    /// impl AsyncStore<&'static str, u64> for Remote {
    ///     type Error = &'static str;
    ///     async fn load(&self, k: &&'static str) -> Result<Option<u64>, Self::Error> {
    ///         Ok(self.0.lock().unwrap().get(k).copied())
    ///     }
    ///     async fn write_batch(&self, ops: &[Op<&'static str, u64>]) -> Result<(), Self::Error> {
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
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = Cache::builder().max_capacity(100).write_through(Remote::default()).build().unwrap();
    /// let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
    /// assert_eq!(cache.compute_async("visits", count).await, Ok(Computed::Inserted(1)));
    /// cache.invalidate_all(); // the next compute reads the store
    /// assert_eq!(cache.compute_async("visits", count).await, Ok(Computed::Replaced(2)));
    /// assert_eq!(cache.store().0.lock().unwrap().get("visits"), Some(&2));
    /// # });
    /// ```
    pub async fn compute_async(
        &self,
        key: K,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
    ) -> Result<Computed<V>, WriteError<St::Error>> {
        let policy = self.policy();
        let guard = Guards::from_buf([policy.locks.lock_async(self.hash(&key)).await]);
        let (current, guard) = match self.get_cached(&key) {
            Some(v) => (Some(v), guard),
            None => {
                // No writes: cancelled or panicking, the call drops no copy.
                let (loaded, guard) = self
                    .store_call(&[], guard, || policy.store.load(&key))
                    .await;
                (loaded.map_err(WriteError::Store)?, guard)
            }
        };
        // A blocking write of a key of the stripe from `f` panics instead of
        // waiting for itself, however this call took the stripe.
        let (value, options) = match KeyGuard::computing(&[guard[0].mark()], || f(current.as_ref()))
        {
            Compute::Keep => {
                return Ok(current.map_or(Computed::Absent, Computed::Unchanged));
            }
            Compute::Remove => {
                let Some(old) = current else {
                    return Ok(Computed::Absent);
                };
                let op = [Op::Delete(key)];
                let (written, guard) = self
                    .store_call(&op, guard, || policy.store.write_batch(&op))
                    .await;
                written.map_err(WriteError::Store)?;
                self.land_delete::<K, _>(op[0].key(), guard);
                return Ok(Computed::Removed(old));
            }
            Compute::Put(value) => (value, None),
            Compute::PutWith(value, options) => (value, Some(options)),
        };
        let returned = value.clone();
        let op = [Op::Put(key, value)];
        let (written, guard) = self
            .store_call(&op, guard, || policy.store.write_batch(&op))
            .await;
        written.map_err(WriteError::Store)?;
        let [Op::Put(key, value)] = op else {
            unreachable!("the op built above")
        };
        self.land_write(key, value, options.as_ref(), guard);
        Ok(match current {
            Some(_) => Computed::Replaced(returned),
            None => Computed::Inserted(returned),
        })
    }

    /// Runs a write-through store call for `ops`, holding their keys'
    /// stripes: the future `call` makes, its drop, and `call` itself (a
    /// store may start the write before its future is first polled). If the
    /// task is cancelled while the call runs, or the store panics, the store
    /// may or may not have the writes: the keys' cached copies are dropped,
    /// so the next read asks the store. The stripes are released before the
    /// listener hears of it, and a store's panic goes on once the listener
    /// has (a listener's panic then is not raised over it, nor from a drop).
    async fn store_call<'a, T, F: std::future::Future<Output = T>>(
        &'a self,
        ops: &[Op<K, V>],
        guards: Guards<'a>,
        call: impl FnOnce() -> F,
    ) -> (T, Guards<'a>) {
        // Each poll of the call runs marked as serving the stripes for this
        // task, so that a store awaiting a write of a key of them panics
        // instead of waiting for itself.
        let marks: smallvec::SmallVec<[StripeMark; 1]> =
            guards.iter().map(KeyGuard::mark).collect();
        // A mutex, not a cell: the future stays `Send` (it is never contended).
        let held = parking_lot::Mutex::new(Some(guards));
        let undo = || {
            let stale: Removed<K, V> = ops
                .iter()
                .filter_map(|op| self.take_stale(op.key()))
                .collect();
            drop(held.lock().take());
            let _ = catch_unwind(AssertUnwindSafe(|| self.notify(stale)));
        };
        let mut cancelled = OnDrop(Some(&undo));
        let call = match catch_unwind(AssertUnwindSafe(call)) {
            Ok(call) => call,
            Err(panic) => {
                cancelled.0 = None;
                undo();
                resume_unwind(panic)
            }
        };
        // In an `Option`, so that the future is dropped as soon as it is
        // done, inside the guard: a panic from its `Drop` is a store panic.
        let mut call = std::pin::pin!(Some(call));
        let result = std::future::poll_fn(|cx| {
            // The waker's address names this poll (see `KeyGuard::serving`).
            let waker = std::ptr::from_ref(cx.waker()).addr();
            let poll = catch_unwind(AssertUnwindSafe(|| {
                KeyGuard::serving(&marks, waker, || {
                    let poll = call
                        .as_mut()
                        .as_pin_mut()
                        .expect("polled only until it is ready")
                        .poll(cx);
                    if poll.is_ready() {
                        call.set(None);
                    }
                    poll
                })
            }));
            match poll {
                Ok(poll) => poll.map(Ok),
                Err(panic) => std::task::Poll::Ready(Err(panic)),
            }
        })
        .await;
        cancelled.0 = None;
        match result {
            Ok(out) => (
                out,
                held.lock().take().expect("the guard is held until now"),
            ),
            Err(panic) => {
                // A future that panicked in its poll goes first, its own
                // drop's panic (if any) swallowed: the first panic is the
                // one raised.
                let _ = catch_unwind(AssertUnwindSafe(|| call.set(None)));
                undo();
                resume_unwind(panic)
            }
        }
    }
}
