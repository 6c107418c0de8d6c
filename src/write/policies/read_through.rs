//! Read-through: misses load from the store, one load per key in flight;
//! writes go to the cache alone.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::super::{AsyncStore, FlushError, Op, ReadThrough, Store, WriteError};
use crate::{Cache, EntryOptions};

impl<K, V, S, St> Cache<K, V, S, ReadThrough<St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: Store<K, V>,
{
    /// The cached value, or the store's, loaded once however many callers
    /// miss on `key` together (see [`Cache::get_or_load`] for what they see).
    /// A value found is cached; `None` is not. A value the cache refuses (too
    /// heavy, or with a zero time-to-live from [`Store::load_options`]) is
    /// returned but not kept: each read loads it again, and each such load
    /// reaches the listener ([`RemovalCause::Size`](crate::RemovalCause::Size)
    /// or [`Expired`](crate::RemovalCause::Expired)) and the stats'
    /// `rejections` or `expirations`. Under W-TinyLfu a value heavier than
    /// the admission window may also lose its contest for room and leave at
    /// once (see [`Cache::insert`]): heard as `Size`, counted in `evictions`.
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
    /// # use larder::{Cache, Op, Store};
    /// struct Squares;
    /// impl Store<u64, u64> for Squares {
    ///     type Error = String;
    ///     fn load(&self, k: &u64) -> Result<Option<u64>, String> {
    ///         Ok((*k < 100).then(|| k * k))
    ///     }
    ///     fn write(&self, _: &Op<u64, u64>) -> Result<(), String> {
    ///         Err("read-only".into())
    ///     }
    /// }
    /// let cache = Cache::builder().max_capacity(10).read_through(Squares).build().unwrap();
    /// assert_eq!(cache.get(&7), Ok(Some(49)));
    /// assert_eq!(cache.get(&700), Ok(None));
    /// assert_eq!(cache.peek(&7), Some(49));
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
    /// page of keys, with one store round trip instead of one per miss. A
    /// key the store has no value for is `None`. As
    /// [`Cache::get_or_load_all`] for the rest.
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller waiting on the keys it
    /// was loading.
    ///
    /// # Panics
    ///
    /// If the store's `load_all` panics, in this caller; the callers
    /// waiting on its keys then load them for themselves.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use larder::{Cache, Op, Store};
    ///
    /// #[derive(Default)]
    /// struct Squares(AtomicUsize); // counts its round trips
    /// impl Store<u64, u64> for Squares {
    ///     type Error = String;
    ///     fn load(&self, k: &u64) -> Result<Option<u64>, String> {
    ///         Ok(self.load_all(&[*k])?.pop().map(|(_, v)| v))
    ///     }
    ///     fn load_all(&self, keys: &[u64]) -> Result<Vec<(u64, u64)>, String> {
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///         Ok(keys.iter().filter(|&&k| k < 100).map(|&k| (k, k * k)).collect())
    ///     }
    ///     fn write(&self, _: &Op<u64, u64>) -> Result<(), String> {
    ///         Err("read-only".into())
    ///     }
    /// }
    /// let cache = Cache::builder().max_capacity(10).read_through(Squares::default()).build().unwrap();
    /// assert_eq!(cache.get(&2), Ok(Some(4)));
    /// assert_eq!(cache.get_all([1, 2, 3, 700]), Ok(vec![Some(1), Some(4), Some(9), None]));
    /// assert_eq!(cache.store().0.load(Ordering::Relaxed), 2, "one round trip each");
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
    /// `Explicit`). [`Cache::refresh`] for a read-through cache.
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
    /// let cache = Cache::builder().max_capacity(100).read_through(db).build().unwrap();
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

    /// Caches `value` under `key`; the store is the caller's to write.
    ///
    /// An entry heavier than one shard's share of the capacity (see
    /// [`Cache::try_insert`]) is not cached: the listener gets it with
    /// [`RemovalCause::Size`](crate::RemovalCause::Size), and `put` still returns `Ok(())`;
    /// so does one W-TinyLfu turns away at once (see [`Cache::insert`]).
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
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
    /// let cache = Cache::builder().max_capacity(100).read_through(Db::default()).build().unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert_eq!(cache.get(&1), Ok(Some(10)));
    /// assert_eq!(cache.store().get(1), None); // the caller writes the store
    /// ```
    pub fn put(&self, key: K, value: V) -> Result<(), WriteError<St::Error>> {
        self.land_write(key, value, None, ());
        Ok(())
    }

    /// [`put`](Self::put) with settings for the cached entry: a time-to-live
    /// and tags (see [`EntryOptions`]).
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
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
    /// use larder::{Cache, EntryOptions};
    ///
    /// let cache = Cache::builder().max_capacity(100).read_through(Db::default()).build().unwrap();
    /// cache.store().set(1, 10); // the caller writes the store...
    /// cache.put_with(1, 10, EntryOptions::new().tags(["user:7"])).unwrap(); // ...and the cache
    /// cache.invalidate_tag("user:7");
    /// assert_eq!(cache.peek(&1), None);
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // loaded from the store again
    /// ```
    pub fn put_with(
        &self,
        key: K,
        value: V,
        options: EntryOptions,
    ) -> Result<(), WriteError<St::Error>> {
        self.land_write(key, value, Some(&options), ());
        Ok(())
    }

    /// Drops `key` from the cache (after the caller changed the store), so
    /// that the next `get` loads it again.
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys).
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
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
    /// let cache = Cache::builder().max_capacity(100).read_through(Db::default()).build().unwrap();
    /// cache.store().set(1, 10);
    /// assert_eq!(cache.get(&1), Ok(Some(10)));
    /// cache.store().set(1, 11); // the caller changes the store...
    /// assert_eq!(cache.get(&1), Ok(Some(10))); // (the cached copy is stale)
    /// cache.delete(&1).unwrap(); // ...and tells the cache
    /// assert_eq!(cache.get(&1), Ok(Some(11)));
    /// ```
    pub fn delete<Q>(&self, key: &Q) -> Result<(), WriteError<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.land_delete(key, ());
        Ok(())
    }

    /// Caches a batch of puts and drops a batch of deletes: [`put`](Self::put)
    /// and [`delete`](Self::delete) of many keys in one call, after the
    /// caller wrote them to the store. A key given more than once lands
    /// once, with its last write; the batch lands in the order of those, as
    /// the other policies' batches do. A load of one of the keys in flight
    /// meanwhile is not cached over the batch.
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
    ///
    /// # Panics
    ///
    /// If a key's `Clone`, `Hash` or `Eq`, or the weigher, panics as the
    /// batch lands: the writes before it have landed, the cached copies of
    /// the keys not landed yet are dropped (the store may hold newer
    /// values), and the panic goes on. If the listener panics, once the
    /// whole batch has landed.
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
    /// #     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// use larder::Cache;
    ///
    /// let cache = Cache::builder().max_capacity(100).read_through(Db::default()).build().unwrap();
    /// cache.store().set(3, 30);
    /// assert_eq!(cache.get(&3), Ok(Some(30)));
    /// // The caller changes the store...
    /// cache.store().set(1, 11);
    /// cache.store().remove(3);
    /// // ...and tells the cache, in one call.
    /// cache.write_all([Op::Put(1, 10), Op::Delete(3), Op::Put(1, 11)]).unwrap();
    /// assert_eq!((cache.peek(&1), cache.peek(&3)), (Some(11), None));
    /// assert_eq!(cache.get(&3), Ok(None)); // loaded: the store has none
    /// ```
    pub fn write_all(
        &self,
        ops: impl IntoIterator<Item = Op<K, V>>,
    ) -> Result<(), WriteError<St::Error>> {
        let (ops, _) = self.last_per_key(ops.into_iter().collect());
        if !ops.is_empty() {
            self.land_batch(ops, ());
        }
        Ok(())
    }

    /// [`write_all`](Self::write_all) of puts: caches many entries the
    /// caller stored.
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
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
    /// # impl Store<u32, u32> for Db {
    /// #     type Error = &'static str;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    /// #         Ok(self.0.lock().unwrap().get(k).copied())
    /// #     }
    /// #     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// use larder::Cache;
    ///
    /// let cache = Cache::builder().max_capacity(100).read_through(Db::default()).build().unwrap();
    /// cache.put_all((0..50).map(|id| (id, id * 2))).unwrap();
    /// assert_eq!(cache.get(&7), Ok(Some(14))); // a hit: the store is empty
    /// assert_eq!(cache.len(), 50);
    /// ```
    pub fn put_all(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), WriteError<St::Error>> {
        self.write_all(entries.into_iter().map(|(k, v)| Op::Put(k, v)))
    }

    /// Nothing to send with this policy.
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
    /// let cache = Cache::builder().max_capacity(100).read_through(Db::default()).build().unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert!(cache.flush().is_ok());
    /// assert_eq!(cache.store().get(1), None); // nothing was sent
    /// ```
    pub fn flush(&self) -> Result<(), FlushError<K, V, St::Error>> {
        Ok(())
    }
}

impl<K, V, S, St> Cache<K, V, S, ReadThrough<St>> {
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
    /// let cache = Cache::builder().max_capacity(100).read_through(Db::default()).build().unwrap();
    /// cache.store().set(1, 10); // the application writes the store itself
    /// assert_eq!(cache.get(&1), Ok(Some(10)));
    /// ```
    pub fn store(&self) -> &St {
        &self.policy().store
    }
}

impl<K, V, S, St> Cache<K, V, S, ReadThrough<St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: AsyncStore<K, V>,
{
    /// `get` for an [`AsyncStore`]: the cached value, or the store's, loaded
    /// once however many callers (sync or async) miss on `key` together. If
    /// the task leading the load is cancelled, a waiting caller takes it over.
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
    ///     .read_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// cache.store().set(1, 10);
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10))); // loaded, then cached
    /// assert_eq!(cache.get_async(&2).await, Ok(None));
    /// assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(10), None));
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
    /// let cache = Cache::builder().max_capacity(100).read_through(Remote::default()).build().unwrap();
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
    /// task) leaves the cached value in place. As `refresh` on a read-through
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
    /// let cache = Cache::builder().max_capacity(100).read_through(remote).build().unwrap();
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    /// cache.store().set(1, 11); // behind the cache's back
    /// assert_eq!(cache.refresh_async(1).await, Ok(Some(11)));
    /// assert_eq!(cache.peek(&1), Some(11));
    /// # });
    /// ```
    pub async fn refresh_async(&self, key: K) -> Result<Option<V>, Arc<St::Error>> {
        self.refresh_from_async(&*self.policy().store, key).await
    }

    /// `put` for an [`AsyncStore`]: caches `value`; the store is the
    /// caller's to write.
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
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
    ///     .read_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put_async(1, 10).await.unwrap();
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    /// assert_eq!(cache.store().get(1), None); // the caller writes the store
    /// # });
    /// ```
    pub async fn put_async(&self, key: K, value: V) -> Result<(), WriteError<St::Error>> {
        self.land_write(key, value, None, ());
        Ok(())
    }

    /// [`put_with`](Self::put_with) for an [`AsyncStore`]: caches `value`
    /// with a time-to-live and tags; the store is not called.
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
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
    /// #     async fn write_batch(&self, _: &[Op<u32, u32>]) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// use std::time::Duration;
    /// use larder::{Cache, Clock, EntryOptions};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    /// # runtime.unwrap().block_on(async {
    /// let (clock, time) = Clock::mock();
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .clock(clock)
    ///     .read_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// cache.store().set(1, 10); // the caller writes the store...
    /// let minute = EntryOptions::new().ttl(Duration::from_secs(60));
    /// cache.put_with_async(1, 10, minute).await.unwrap(); // ...and the cache
    /// cache.store().set(1, 11);
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10))); // cached
    /// time.advance(Duration::from_secs(60));
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(11))); // expired: loaded
    /// # });
    /// ```
    pub async fn put_with_async(
        &self,
        key: K,
        value: V,
        options: EntryOptions,
    ) -> Result<(), WriteError<St::Error>> {
        self.land_write(key, value, Some(&options), ());
        Ok(())
    }

    /// `delete` for an [`AsyncStore`]: drops `key` from the cache.
    ///
    /// `key` may be a borrowed form (`&str` for `String` keys).
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
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
    ///     .read_through(Remote::default())
    ///     .build()
    ///     .unwrap();
    /// cache.store().set(1, 10);
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    /// cache.store().set(1, 11); // the caller changes the store...
    /// cache.delete_async(&1).await.unwrap(); // ...and tells the cache
    /// assert_eq!(cache.get_async(&1).await, Ok(Some(11)));
    /// # });
    /// ```
    pub async fn delete_async<Q>(&self, key: &Q) -> Result<(), WriteError<St::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.land_delete(key, ());
        Ok(())
    }

    /// [`write_all`](Self::write_all) for an [`AsyncStore`]: caches a
    /// batch of puts and drops a batch of deletes the caller wrote to the
    /// store; the store is not called.
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
    ///
    /// # Panics
    ///
    /// As [`write_all`](Self::write_all).
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{AsyncStore, Op};
    /// # #[derive(Default)]
    /// # struct Remote(Mutex<HashMap<u32, u32>>);
    /// # impl AsyncStore<u32, u32> for Remote {
    /// #     type Error = &'static str;
    /// #     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    /// #         Ok(self.0.lock().unwrap().get(k).copied())
    /// #     }
    /// #     async fn write_batch(&self, _: &[Op<u32, u32>]) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// use larder::Cache;
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = Cache::builder().max_capacity(100).read_through(Remote::default()).build().unwrap();
    /// cache.put_async(3, 30).await.unwrap();
    /// cache.write_all_async([Op::Put(1, 10), Op::Delete(3)]).await.unwrap();
    /// assert_eq!((cache.peek(&1), cache.peek(&3)), (Some(10), None));
    /// # });
    /// ```
    pub async fn write_all_async(
        &self,
        ops: impl IntoIterator<Item = Op<K, V>>,
    ) -> Result<(), WriteError<St::Error>> {
        let (ops, _) = self.last_per_key(ops.into_iter().collect());
        if !ops.is_empty() {
            self.land_batch(ops, ());
        }
        Ok(())
    }

    /// [`write_all_async`](Self::write_all_async) of puts: caches many
    /// entries the caller stored.
    ///
    /// # Errors
    ///
    /// None with this policy; the `Result` matches the other policies.
    ///
    /// # Panics
    ///
    /// As [`write_all`](Self::write_all).
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{AsyncStore, Op};
    /// # #[derive(Default)]
    /// # struct Remote(Mutex<HashMap<u32, u32>>);
    /// # impl AsyncStore<u32, u32> for Remote {
    /// #     type Error = &'static str;
    /// #     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> {
    /// #         Ok(self.0.lock().unwrap().get(k).copied())
    /// #     }
    /// #     async fn write_batch(&self, _: &[Op<u32, u32>]) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// use larder::Cache;
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = Cache::builder().max_capacity(100).read_through(Remote::default()).build().unwrap();
    /// cache.put_all_async((0..50).map(|id| (id, id * 2))).await.unwrap();
    /// assert_eq!(cache.get_async(&7).await, Ok(Some(14)));
    /// # });
    /// ```
    pub async fn put_all_async(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), WriteError<St::Error>> {
        self.write_all_async(entries.into_iter().map(|(k, v)| Op::Put(k, v)))
            .await
    }
}
