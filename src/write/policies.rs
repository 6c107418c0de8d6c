//! `get`, `put`, `delete` and `flush` for each write policy: the same calls,
//! with the write landing where the policy says.

use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::back::{Pending, WriteBehind};
use super::{
    AsyncStore, FlushError, KeyGuard, Op, ReadThrough, Spawned, Store, WriteError, WriteStats,
    WriteThrough,
};
use crate::cache::Mode;
use crate::store::Removed;
use crate::{Cache, EntryOptions, RemovalCause};

/// What `get` returns on a store-backed cache: the value, `None` when the
/// store has none, or the store's error shared by everyone waiting on the load.
type Loaded<V, E> = Result<Option<V>, Arc<E>>;

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// A cache hit, or one load per key through `fetch`, cached if it finds
    /// a value and nothing wrote the key meanwhile.
    fn read_through<E: Send + Sync + 'static>(
        &self,
        key: &K,
        fetch: impl FnOnce(&K) -> Result<Option<V>, E>,
    ) -> Loaded<V, E> {
        if let Some(v) = self.get_cached(key) {
            return Ok(Some(v));
        }
        self.load(key.clone(), Mode::Store, |k| {
            Ok(fetch(k)?.map(|v| (v, EntryOptions::default())))
        })
    }

    /// Stores `value` in the cache alone, with `options` if any, handing what
    /// it displaced to the listener once `guard` (a key lock) is released.
    ///
    /// The store (or the write-back queue) already has the write. Should the
    /// weigher or the [`Expiry`](crate::Expiry) panic, the key's cached copy
    /// is dropped before the panic goes on, so that reads find the write
    /// there instead of the value it replaced.
    fn land_write<G>(&self, key: K, value: V, options: Option<&EntryOptions>, guard: G) {
        let mut removed = Removed::new();
        let (ttl, tags) = options.map_or((None, &[][..]), |o| (o.time_to_live(), o.tag_list()));
        // The key's `Clone` may panic too: the stale copy goes all the same.
        let copy = match catch_unwind(AssertUnwindSafe(|| {
            self.write_calls_back().then(|| key.clone())
        })) {
            Ok(copy) => copy,
            Err(panic) => self.drop_stale_copy(&key, removed, guard, panic),
        };
        let landed = catch_unwind(AssertUnwindSafe(|| {
            self.write_deferred(key, value, ttl, tags, None, &mut removed)
        }));
        match landed {
            Ok(Ok(())) => {}
            Ok(Err(rejected)) => removed.push((rejected.key, rejected.value, RemovalCause::Size)),
            Err(panic) => match copy {
                Some(key) => self.drop_stale_copy(&key, removed, guard, panic),
                None => {
                    drop(guard);
                    let _ = catch_unwind(AssertUnwindSafe(|| self.notify(removed)));
                    resume_unwind(panic);
                }
            },
        }
        drop(guard);
        self.notify(removed);
    }

    /// After user code panicked in [`land_write`](Self::land_write): drops
    /// `key`'s cached copy (the store or the queue has a newer write),
    /// releases `guard`, tells the listener, and resumes `panic` (the
    /// callback's panic is the one the caller sees).
    fn drop_stale_copy<G>(
        &self,
        key: &K,
        mut removed: Removed<K, V>,
        guard: G,
        panic: Box<dyn std::any::Any + Send>,
    ) -> ! {
        if let Some(stale) = self.take(key) {
            removed.push(stale);
        }
        drop(guard);
        let _ = catch_unwind(AssertUnwindSafe(|| self.notify(removed)));
        resume_unwind(panic)
    }

    /// An async read-through miss: one load per key through `fetch`.
    async fn read_through_async<E: Send + Sync + 'static>(
        &self,
        key: &K,
        fetch: impl std::future::Future<Output = Result<Option<V>, E>>,
    ) -> Loaded<V, E> {
        if let Some(v) = self.get_cached(key) {
            return Ok(Some(v));
        }
        let load = async { Ok(fetch.await?.map(|v| (v, EntryOptions::default()))) };
        self.load_async(key.clone(), Mode::Store, load).await
    }

    /// Removes `key` from the cache alone, as [`land_write`](Self::land_write).
    fn land_delete<G>(&self, key: &K, guard: G) {
        let removed = self.take(key);
        drop(guard);
        self.notify(removed);
    }
}

impl<K, V, S, St> Cache<K, V, S, ReadThrough<St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: Store<K, V>,
{
    /// The cached value, or the store's, loaded once however many callers
    /// miss on `key` together (see [`Cache::get_or_load`] for what they see).
    /// A value found is cached; `None` is not.
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
    pub fn get(&self, key: &K) -> Result<Option<V>, Arc<St::Error>> {
        self.read_through(key, |k| self.policy().store.load(k))
    }

    /// Caches `value` under `key`; the store is the caller's to write.
    ///
    /// An entry heavier than one shard's share of the capacity (see
    /// [`Cache::try_insert`]) is not cached: the listener gets it with
    /// [`RemovalCause::Size`], and `put` still returns `Ok(())`.
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
    pub fn delete(&self, key: &K) -> Result<(), WriteError<St::Error>> {
        self.land_delete(key, ());
        Ok(())
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

impl<K, V, S, St> Cache<K, V, S, WriteThrough<St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    St: Store<K, V>,
{
    /// The cached value, or the store's, loaded once per key as with
    /// [`ReadThrough`].
    ///
    /// # Errors
    ///
    /// The store's error, shared with every caller of the same load.
    ///
    /// # Panics
    ///
    /// If the store's `load` panics, in the caller that ran it.
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
    pub fn get(&self, key: &K) -> Result<Option<V>, Arc<St::Error>> {
        self.read_through(key, |k| self.policy().store.load(k))
    }

    /// Writes `value` to the store, then to the cache, and returns once the
    /// store took it. Writes to one key are serialized across the two steps,
    /// so the cache and the store end with the same last write (unless the
    /// cache refuses it, below).
    ///
    /// The cache may refuse the value after the store took it: an entry
    /// heavier than one shard's share of the capacity (see
    /// [`Cache::try_insert`]) is not cached. The listener then gets it with
    /// [`RemovalCause::Size`] (and the key's previous cached value with
    /// [`RemovalCause::Replaced`]), `put` still returns `Ok(())`, and reads
    /// load the value from the store. An entry whose time-to-live is zero is
    /// likewise dropped, with [`RemovalCause::Expired`].
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
    /// weigher, the [`Expiry`](crate::Expiry) or the key's `Clone` panics,
    /// the store has the write and the key's cached copy is dropped, so that
    /// reads load the new value. An eviction listener that panics on what
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
    /// [`Expiry`](crate::Expiry) or the key's `Clone` panics, the store has
    /// the write and the key's cached copy is dropped. An eviction listener that panics on what
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
        let guard = policy.locks.lock(self.hash(&key));
        let op = Op::Put(key, value);
        let (written, guard) = self.store_call_sync(op.key(), guard, || policy.store.write(&op));
        written.map_err(WriteError::Store)?;
        let Op::Put(key, value) = op else {
            unreachable!("the op built above")
        };
        self.land_write(key, value, options, guard);
        Ok(())
    }

    /// Deletes `key` from the store, then from the cache.
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
    pub fn delete(&self, key: &K) -> Result<(), WriteError<St::Error>> {
        let policy = self.policy();
        let guard = policy.locks.lock(self.hash(key));
        let op = Op::Delete(key.clone());
        let (written, guard) = self.store_call_sync(key, guard, || policy.store.write(&op));
        written.map_err(WriteError::Store)?;
        self.land_delete(key, guard);
        Ok(())
    }

    /// Runs a write-through store `call` for `key`, holding its stripe. If
    /// the store panics it may or may not have the write: the key's cached
    /// copy is dropped, the stripe released, the listener told (its own panic
    /// is not raised over the store's), and the store's panic goes on.
    fn store_call_sync<'a, T>(
        &'a self,
        key: &K,
        guard: KeyGuard<'a>,
        call: impl FnOnce() -> T,
    ) -> (T, KeyGuard<'a>) {
        match catch_unwind(AssertUnwindSafe(call)) {
            Ok(out) => (out, guard),
            Err(panic) => {
                let stale = self.take(key);
                drop(guard);
                let _ = catch_unwind(AssertUnwindSafe(|| self.notify(stale)));
                resume_unwind(panic)
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
    /// # Errors
    ///
    /// The store's error, shared with every caller of the same load.
    ///
    /// # Panics
    ///
    /// If the store's `load` panics, in the caller that ran it.
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
    pub fn get(&self, key: &K) -> Result<Option<V>, Arc<St::Error>> {
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
        self.read_through(key, |k| match policy.lookup(k) {
            Some(Pending::Put(v)) => Ok(Some(v)),
            Some(Pending::Delete) => Ok(None),
            None => policy.store().load(k),
        })
    }

    /// Caches `value` and queues its write to the store. A later write to
    /// the same key before this one is sent replaces it in the queue.
    ///
    /// A value the cache refuses (heavier than one shard's share of the
    /// capacity: see [`Cache::try_insert`]; the listener gets it with
    /// [`RemovalCause::Size`]) is queued all the same, and reads find it in
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
    /// If the weigher, the [`Expiry`](crate::Expiry) or the key's `Clone`
    /// panics after the write was queued, the key's cached copy is dropped,
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
            if policy.try_accept(&key, &mut write)? {
                self.land_write(key, value, options, guard);
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
    /// # Errors
    ///
    /// [`WriteError::QueueFull`] if the queue is full and the cache was
    /// built with [`Backpressure::Fail`](crate::Backpressure::Fail) (with
    /// `Block`, the call waits for room instead); [`WriteError::Closed`]
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
    pub fn delete(&self, key: &K) -> Result<(), WriteError<St::Error>> {
        let policy = self.policy();
        let mut write = Some(Pending::Delete);
        loop {
            let guard = policy.shared.locks.lock(self.hash(key));
            if policy.try_accept(key, &mut write)? {
                self.land_delete(key, guard);
                return Ok(());
            }
            drop(guard);
            policy.wait_for_room(key);
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
    /// print to stderr how many writes failed or were left unsent. What a
    /// crash loses is what was queued: the latest writes of at most
    /// [`queue_capacity`](crate::WriteBack::queue_capacity) keys. A write is
    /// due once it has waited `max_delay`, but is sent only when the flusher
    /// is free, so a slow or failing store keeps writes queued for longer.
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
        report: Result<(), FlushError<K, V, St::Error>>,
    ) -> Result<(), FlushError<K, V, St::Error>> {
        let Err(report) = report else {
            return Ok(());
        };
        let policy = self.policy();
        let mut first_panic = None;
        for failed in &report.failed {
            let key = failed.op.key();
            // A panicking listener must not cost the other keys their
            // forgetting, nor the caller its report.
            let forgot = catch_unwind(AssertUnwindSafe(|| {
                let guard = policy.shared.locks.lock(self.hash(key));
                if policy.lookup(key).is_none() {
                    self.land_delete(key, guard);
                }
            }));
            if let Err(panic) = forgot {
                first_panic.get_or_insert(panic);
            }
        }
        if let Some(panic) = first_panic {
            // The listener's panic goes on to the caller, as after any
            // removal; the report waits for the next `flush` or `close`.
            policy.settled(report.failed);
            resume_unwind(panic);
        }
        policy.settled(Vec::new());
        Err(report)
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
    pub async fn get_async(&self, key: &K) -> Result<Option<V>, Arc<St::Error>> {
        let store = &self.policy().store;
        self.read_through_async(key, store.load(key)).await
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

    /// `delete` for an [`AsyncStore`]: drops `key` from the cache.
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
    pub async fn delete_async(&self, key: &K) -> Result<(), WriteError<St::Error>> {
        self.land_delete(key, ());
        Ok(())
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
    pub async fn get_async(&self, key: &K) -> Result<Option<V>, Arc<St::Error>> {
        let store = &self.policy().store;
        self.read_through_async(key, store.load(key)).await
    }

    /// `put` for an [`AsyncStore`]: writes the store, then the cache; writes
    /// of one key, sync or async, are serialized. If the task is cancelled
    /// while the store call runs, the store may or may not have the write, so
    /// the key's cached copy is dropped and the next read asks the store.
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] with the store's error; the cache is unchanged.
    ///
    /// # Panics
    ///
    /// If the store panics: as with a cancellation, the store may have the
    /// write, so the key's cached copy is dropped before the panic goes on.
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
        let policy = self.policy();
        let guard = policy.locks.lock_async(self.hash(&key)).await;
        let op = [Op::Put(key.clone(), value)];
        let (written, guard) = self
            .store_call(&key, guard, policy.store.write_batch(&op))
            .await;
        written.map_err(WriteError::Store)?;
        let [Op::Put(key, value)] = op else {
            unreachable!("the op built above")
        };
        self.land_write(key, value, None, guard);
        Ok(())
    }

    /// `delete` for an [`AsyncStore`]: deletes from the store, then from the
    /// cache. If the task is cancelled while the store call runs, the key's
    /// cached copy is dropped, as with `put_async`.
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
    pub async fn delete_async(&self, key: &K) -> Result<(), WriteError<St::Error>> {
        let policy = self.policy();
        let guard = policy.locks.lock_async(self.hash(key)).await;
        let op = [Op::Delete(key.clone())];
        let (written, guard) = self
            .store_call(key, guard, policy.store.write_batch(&op))
            .await;
        written.map_err(WriteError::Store)?;
        self.land_delete(key, guard);
        Ok(())
    }

    /// Runs a write-through store `call` for `key`, holding its stripe. If the
    /// task is cancelled while the call runs, or the store panics, the store
    /// may or may not have the write: the key's cached copy is dropped, so the
    /// next read asks the store. The stripe is released before the listener
    /// hears of it, and a store's panic goes on once the listener has (a
    /// listener's panic then is not raised over it, nor from a drop).
    async fn store_call<'a, T>(
        &'a self,
        key: &'a K,
        guard: KeyGuard<'a>,
        call: impl std::future::Future<Output = T>,
    ) -> (T, KeyGuard<'a>) {
        // A mutex, not a cell: the future stays `Send` (it is never contended).
        let held = parking_lot::Mutex::new(Some(guard));
        let undo = || {
            let stale = self.take(key);
            drop(held.lock().take());
            let _ = catch_unwind(AssertUnwindSafe(|| self.notify(stale)));
        };
        let mut cancelled = OnDrop(Some(&undo));
        let mut call = std::pin::pin!(call);
        let result = std::future::poll_fn(|cx| {
            match catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
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
                undo();
                resume_unwind(panic)
            }
        }
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
        let policy = self.policy();
        let mut write = Some(Pending::Put(value.clone()));
        // Waiting for room (below) files a waker; done or dropped, this
        // future takes it away.
        let waiter = crate::write::Waiter::new();
        let _forget = crate::write::Forget(|| policy.forget(&waiter));
        loop {
            let guard = policy.shared.locks.lock_async(self.hash(&key)).await;
            if policy.try_accept(&key, &mut write)? {
                self.land_write(key, value, None, guard);
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
    pub async fn delete_async(&self, key: &K) -> Result<(), WriteError<St::Error>> {
        let policy = self.policy();
        let mut write = Some(Pending::Delete);
        // Waiting for room (below) files a waker; done or dropped, this
        // future takes it away.
        let waiter = crate::write::Waiter::new();
        let _forget = crate::write::Forget(|| policy.forget(&waiter));
        loop {
            let guard = policy.shared.locks.lock_async(self.hash(key)).await;
            if policy.try_accept(key, &mut write)? {
                self.land_delete(key, guard);
                return Ok(());
            }
            drop(guard);
            std::future::poll_fn(|cx| policy.poll_room(key, &waiter, cx)).await;
        }
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
    /// `get` for a write-back cache over an [`AsyncStore`]: the cached value,
    /// else the key's pending write, else the store's, awaited (one load per
    /// key at a time).
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
    pub async fn get_async(&self, key: &K) -> Result<Option<V>, Arc<St::Error>> {
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
        let fetch = async {
            match policy.lookup(key) {
                Some(Pending::Put(v)) => Ok(Some(v)),
                Some(Pending::Delete) => Ok(None),
                None => policy.store().store().load(key).await,
            }
        };
        self.read_through_async(key, fetch).await
    }
}

/// Runs its closure when dropped unless disarmed (set to `None`): the undo of
/// an async write whose task was cancelled mid-way.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}
