//! The builder's write policy: a cache-aside builder becomes a read-through,
//! write-through or write-back one, each bringing its store.

use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use super::{BuildError, CacheBuilder};
use crate::write::{ReadThrough, WriteBehind, WriteThrough};
use crate::{CacheAside, Store, WriteBack};

impl<K, V, S> CacheBuilder<K, V, S, CacheAside>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// Read-through: `get` loads a missing key from `store`, one load per
    /// key at a time; `put` and `delete` change only the cache (the
    /// application writes the store). See [`ReadThrough`]. `store` is a
    /// [`Store`], or an [`AsyncStore`](crate::AsyncStore) for the `_async` calls.
    ///
    /// ```
    /// # use larder::{Cache, Op, Store};
    /// struct Doubles;
    /// impl Store<u32, u32> for Doubles {
    ///     type Error = std::convert::Infallible;
    ///     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(Some(k * 2)) }
    ///     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Ok(()) }
    /// }
    /// let cache = Cache::builder().max_capacity(100).read_through(Doubles).build().unwrap();
    /// assert_eq!(cache.get(&21), Ok(Some(42)));
    /// ```
    pub fn read_through<St: Send + Sync + 'static>(
        self,
        store: St,
    ) -> CacheBuilder<K, V, S, ReadThrough<St>> {
        self.with_write(ReadThrough::new(store), None)
    }

    /// Write-through: `put` and `delete` write `store` first and the cache
    /// after, returning once both hold the write (an entry the cache refuses,
    /// too heavy or with a zero time-to-live, is stored but not cached);
    /// `get` reads through. See
    /// [`WriteThrough`]. `store` is a [`Store`], or an
    /// [`AsyncStore`](crate::AsyncStore) for the `_async` calls.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{Op, Store};
    /// # #[derive(Default)]
    /// # struct Memory(Mutex<HashMap<u32, String>>);
    /// # impl Store<u32, String> for Memory {
    /// #     type Error = std::convert::Infallible;
    /// #     fn load(&self, key: &u32) -> Result<Option<String>, Self::Error> {
    /// #         Ok(self.0.lock().unwrap().get(key).cloned())
    /// #     }
    /// #     fn write(&self, op: &Op<u32, String>) -> Result<(), Self::Error> {
    /// #         let mut map = self.0.lock().unwrap();
    /// #         match op {
    /// #             Op::Put(k, v) => map.insert(*k, v.clone()),
    /// #             Op::Delete(k) => map.remove(k),
    /// #         };
    /// #         Ok(())
    /// #     }
    /// # }
    /// use larder::Cache;
    ///
    /// let cache: Cache<u32, String, _, _> = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_through(Memory::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, "one".to_string()).unwrap();
    /// assert_eq!(cache.store().load(&1).unwrap().as_deref(), Some("one"));
    /// assert_eq!(cache.get(&1).unwrap().as_deref(), Some("one"));
    /// ```
    pub fn write_through<St: Send + Sync + 'static>(
        self,
        store: St,
    ) -> CacheBuilder<K, V, S, WriteThrough<St>> {
        self.with_write(WriteThrough::new(store), None)
    }

    /// Write-back: `put` and `delete` update the cache and queue the write; a
    /// flusher thread, started by `build`, sends the queue to `store` in
    /// batches as `settings` say; `get` reads your writes, then through. See
    /// [`WriteBehind`] for the cache's `put`, `delete`, `flush` and `close`.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use std::sync::Mutex;
    /// # use larder::{Op, Store};
    /// # #[derive(Default)]
    /// # struct Memory(Mutex<HashMap<u32, String>>);
    /// # impl Store<u32, String> for Memory {
    /// #     type Error = std::convert::Infallible;
    /// #     fn load(&self, key: &u32) -> Result<Option<String>, Self::Error> {
    /// #         Ok(self.0.lock().unwrap().get(key).cloned())
    /// #     }
    /// #     fn write(&self, op: &Op<u32, String>) -> Result<(), Self::Error> {
    /// #         let mut map = self.0.lock().unwrap();
    /// #         match op {
    /// #             Op::Put(k, v) => map.insert(*k, v.clone()),
    /// #             Op::Delete(k) => map.remove(k),
    /// #         };
    /// #         Ok(())
    /// #     }
    /// # }
    /// use larder::{Cache, WriteBack};
    ///
    /// let cache: Cache<u32, String, _, _> = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Memory::default(), WriteBack::default())
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, "one".to_string()).unwrap();
    /// assert_eq!(cache.get(&1).unwrap().as_deref(), Some("one")); // before the store has it
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().load(&1).unwrap().as_deref(), Some("one"));
    /// ```
    pub fn write_back<St: Store<K, V>>(
        self,
        store: St,
        settings: WriteBack,
    ) -> CacheBuilder<K, V, S, WriteBehind<K, V, St>> {
        let error = settings
            .check()
            .err()
            .map(|reason| BuildError::InvalidWriteBack { reason });
        self.with_write(WriteBehind::new(store, settings), error)
    }

    fn with_write<W>(self, write: W, write_error: Option<BuildError>) -> CacheBuilder<K, V, S, W> {
        CacheBuilder {
            settings: self.settings,
            hasher: self.hasher,
            sweeper: self.sweeper,
            write,
            write_error,
            _types: PhantomData,
        }
    }
}

impl<K, V, S, St> CacheBuilder<K, V, S, WriteBehind<K, V, St>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    /// Hands each write-back write the store still refused after every retry
    /// to `handler`, on the flusher thread, as soon as it is given up —
    /// instead of keeping it (readable, and holding queue room) until `flush`
    /// or `close` reports it. Use it to log, alert, or park failures
    /// elsewhere; a panic in it is ignored. Called again, the later handler
    /// replaces the earlier one. The failed value stays in the
    /// cache until it is evicted or replaced; until the handler has been
    /// called with it, its key reads as it even if evicted (a read never
    /// falls back to the store's older value before anyone was told).
    ///
    /// If dropping the payload of a handler's panic panics too, the flusher
    /// dies. The writes it had not yet handed over are then reported by the
    /// next `flush` or `close`, as failed because the flusher panicked; none
    /// the handler got is reported again. A write whose key was written
    /// again meanwhile is counted as superseded, and the newer write is
    /// reported in its place.
    ///
    /// `handler` must not wait for the cache's queue to drain (a blocking
    /// `put` on a full queue, or a blocking `put_all` whose keys do not all
    /// fit): the flusher is busy running it. `flush` and
    /// `close` called from it return at once, with what is reported so far.
    /// Nor should it own a handle of the cache: the cache would then never be
    /// dropped, and its queue never drained by the drop.
    ///
    /// ```
    /// # use larder::{Cache, Op, Store, WriteBack};
    /// # use std::sync::{Arc, Mutex};
    /// struct Down;
    /// impl Store<u32, u32> for Down {
    ///     type Error = &'static str;
    ///     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
    ///     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Err("down") }
    /// }
    /// let lost = Arc::new(Mutex::new(Vec::new()));
    /// let log = lost.clone();
    /// let cache = Cache::builder()
    ///     .max_capacity(10)
    ///     .write_back(Down, WriteBack::default().retries(0, std::time::Duration::ZERO))
    ///     .on_write_failure(move |failed| log.lock().unwrap().push(failed.op))
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert!(cache.flush().is_ok(), "handed over, not reported");
    /// assert_eq!(*lost.lock().unwrap(), vec![Op::Put(1, 10)]);
    /// ```
    pub fn on_write_failure(
        self,
        handler: impl Fn(crate::FailedWrite<K, V, St::Error>) + Send + Sync + 'static,
    ) -> Self {
        self.write.set_failure_handler(std::sync::Arc::new(handler));
        self
    }
}
