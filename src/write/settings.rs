//! [`WriteBack`]: the settings of a write-back cache (batching, delays,
//! retries, the queue's bound and what a full queue does).

use std::time::Duration;

/// Settings of a write-back cache's queue and flusher, for
/// [`CacheBuilder::write_back`](crate::CacheBuilder::write_back).
///
/// The queue is one lock for the whole cache. Values' `Drop` runs outside
/// it, on every path, a panic in user code's included (keys' too, but for a
/// key whose own `Hash` panics as a map takes it in), and their `Clone`,
/// `Hash` and `Eq` run under it when a read finds a key's write still queued,
/// when a write is queued, and when the flusher takes a batch: a slow `Clone`
/// there holds up writes and queue reads of every key meanwhile.
///
/// ```
/// use std::time::Duration;
/// use larder::{Backpressure, WriteBack};
///
/// let settings = WriteBack::default()
///     .max_delay(Duration::from_millis(50))
///     .batch(256)
///     .queue_capacity(10_000)
///     .backpressure(Backpressure::Fail)
///     .retries(5, Duration::from_millis(10));
/// assert_eq!(settings.batch_size(), 256);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "settings do nothing until passed to `write_back`; each returns the settings to keep"]
pub struct WriteBack {
    pub(crate) max_delay: Duration,
    pub(crate) batch: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) backpressure: Backpressure,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) drop_wait: Duration,
}

impl Default for WriteBack {
    /// 50 ms delay, batches of 256, room for 65,536 dirty keys, writers block
    /// when it is full, 5 retries from 10 ms doubling up to 1 s, and a drop
    /// that waits up to 5 s for the queue to drain.
    fn default() -> Self {
        Self {
            max_delay: Duration::from_millis(50),
            batch: 256,
            queue_capacity: 65_536,
            backpressure: Backpressure::Block,
            retries: 5,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            drop_wait: Duration::from_secs(5),
        }
    }
}

impl WriteBack {
    /// How long a write may wait in the queue before its batch is sent, even
    /// if the batch is not full. Zero sends every write as soon as the flusher
    /// is free; `Duration::MAX` waits for a full batch, a `flush` or `close`,
    /// or a writer waiting for room.
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
    /// let settings = WriteBack::default().max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// assert_eq!(cache.store().get(1), None); // waiting for a full batch
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// ```
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The most writes per [`Store::write_batch`](crate::Store::write_batch) call; a batch is sent as soon
    /// as this many keys are waiting. Must be at least 1.
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
    /// let settings = WriteBack::default().batch(3).max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// for k in 0..5 {
    ///     cache.put(k, k).unwrap();
    /// }
    /// cache.flush().unwrap();
    /// assert_eq!(cache.write_stats().store_calls, 2); // 3 writes, then the last 2
    /// ```
    pub fn batch(mut self, size: usize) -> Self {
        self.batch = size;
        self
    }

    /// The configured batch size.
    ///
    /// ```
    /// use larder::WriteBack;
    ///
    /// assert_eq!(WriteBack::default().batch_size(), 256);
    /// assert_eq!(WriteBack::default().batch(64).batch_size(), 64);
    /// ```
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The most dirty keys held at once: waiting, being written, or failed and
    /// not yet reported. Repeated writes to a dirty key take no more room.
    /// Must be at least 1.
    ///
    /// Failed writes keep their room until `flush` or `close` reports them,
    /// so that a store that is down cannot make memory grow: a key's failed
    /// write that a newer write of the key followed takes a room of its own,
    /// and once such failures alone fill the queue, a dirty key's writes
    /// wait for room too (unless they replace a write still waiting;
    /// [`WriteStats::queued`](crate::WriteStats::queued) counts the room in
    /// use). An application
    /// whose store can fail for long should set a failure handler
    /// ([`CacheBuilder::on_write_failure`](crate::CacheBuilder::on_write_failure)),
    /// which frees the room as each failure is handed over, or call `flush`
    /// now and then: otherwise, with [`Backpressure::Block`], a full queue of
    /// unreported failures keeps writers waiting.
    ///
    /// One exception to the bound: a report goes back for the next `flush`
    /// or `close` when an eviction listener panics on it (see the
    /// write-back `flush`'s panics), its failures taking room again, while
    /// the room it freed as it was taken may have been written into
    /// meanwhile. A listener that panics in every `flush`, beside writers
    /// that keep writing, so lets the failures held grow by up to this many
    /// per `flush`. None is lost: each is reported by the first `flush`
    /// whose listener does not panic.
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
    /// let settings = WriteBack::default()
    ///     .queue_capacity(1)
    ///     .backpressure(Backpressure::Fail)
    ///     .max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.put(1, 11).unwrap(); // key 1 is dirty already: no more room needed
    /// assert_eq!(cache.write_stats().dirty, 1);
    /// assert_eq!(cache.put(2, 20), Err(WriteError::QueueFull));
    /// cache.flush().unwrap(); // key 1 is stored: its room is free
    /// cache.put(2, 20).unwrap();
    /// ```
    pub fn queue_capacity(mut self, keys: usize) -> Self {
        self.queue_capacity = keys;
        self
    }

    /// What a write does when the queue is full.
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
    /// use larder::{Backpressure, Cache, WriteBack};
    ///
    /// let settings = WriteBack::default()
    ///     .backpressure(Backpressure::Block) // the default
    ///     .queue_capacity(1)
    ///     .max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.put(2, 20).unwrap(); // waits while the flusher sends key 1
    /// assert_eq!(cache.store().get(1), Some(10));
    /// ```
    pub fn backpressure(mut self, mode: Backpressure) -> Self {
        self.backpressure = mode;
        self
    }

    /// Retries of a failed batch, the first after `backoff`, each later one
    /// after twice the previous wait (at most [`max_backoff`](Self::max_backoff)).
    /// A write still failing after them is given up on: it is reported by the
    /// next `flush` or `close` or, if the cache has a failure handler
    /// ([`CacheBuilder::on_write_failure`](crate::CacheBuilder::on_write_failure)),
    /// handed to the handler instead, as soon as it is given up.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use larder::{Cache, Op, Store, WriteBack};
    ///
    /// #[derive(Default)]
    /// struct Flaky(AtomicU32); // fails twice, then works
    /// impl Store<u32, u32> for Flaky {
    ///     type Error = &'static str;
    ///     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
    ///     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> {
    ///         if self.0.fetch_add(1, Ordering::SeqCst) < 2 { Err("busy") } else { Ok(()) }
    ///     }
    /// }
    /// let settings = WriteBack::default().retries(2, Duration::from_millis(1));
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Flaky::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.flush().unwrap(); // the third attempt succeeded
    /// let stats = cache.write_stats();
    /// assert_eq!((stats.store_calls, stats.retries, stats.stored), (3, 2, 1));
    /// ```
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// The longest wait between two retries: at most a day (`build` refuses
    /// more with [`BuildError::InvalidWriteBack`](crate::BuildError::InvalidWriteBack)),
    /// since `flush`, `close` and the cache's drop wait out every backoff of
    /// a failing write.
    ///
    /// ```
    /// # use larder::{Op, Store};
    /// # struct Down; // a store that refuses every write
    /// # impl Store<u32, u32> for Down {
    /// #     type Error = &'static str;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
    /// #     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Err("down") }
    /// # }
    /// use std::time::Duration;
    /// use larder::{Cache, WriteBack};
    ///
    /// let settings = WriteBack::default()
    ///     .retries(3, Duration::from_secs(3600))
    ///     .max_backoff(Duration::from_millis(1)); // the hour is capped at 1 ms
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Down, settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// let report = cache.flush().unwrap_err(); // three retries, 1 ms apart
    /// assert_eq!(report.failed[0].attempts, 4);
    ///
    /// // A flush or close waits out every backoff: more than a day is refused.
    /// let forever = WriteBack::default().max_backoff(Duration::MAX);
    /// let refused = Cache::<u32, u32>::builder().max_capacity(100).write_back(Down, forever).build();
    /// assert!(matches!(refused, Err(larder::BuildError::InvalidWriteBack { .. })));
    /// ```
    pub fn max_backoff(mut self, wait: Duration) -> Self {
        self.max_backoff = wait;
        self
    }

    /// How long dropping the last handle of a write-back cache waits for its
    /// queue to drain. Writes still queued after it are written by the flusher
    /// thread for as long as the process lives, and the store is dropped on
    /// that thread when it is done; a queue drained in time has the store
    /// dropped before the handle's drop returns, as `close` does (unless the
    /// flusher's last drops of keys and values outlast the wait too).
    /// `Duration::MAX` waits until the queue drains, however long the store
    /// takes (for ever, if it hangs).
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
    /// let db = Db::default(); // an in-memory `Store`, shared with the cache
    /// let settings = WriteBack::default()
    ///     .max_delay(Duration::MAX)
    ///     .drop_wait(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(db.clone(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// drop(cache); // waits until the queue is drained
    /// assert_eq!(db.get(1), Some(10));
    /// ```
    pub fn drop_wait(mut self, wait: Duration) -> Self {
        self.drop_wait = wait;
        self
    }

    /// The settings' first problem, if any.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.batch == 0 {
            return Err("the batch size must be at least 1");
        }
        if self.queue_capacity == 0 {
            return Err("the queue capacity must be at least 1");
        }
        if self.max_backoff > MAX_BACKOFF {
            return Err(
                "max_backoff must be at most a day: flush and close wait out every backoff",
            );
        }
        Ok(())
    }
}

/// The longest `max_backoff` a [`WriteBack`] may have.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

/// What a write-back `put` or `delete` does when the queue is full (see
/// [`WriteBack::queue_capacity`]).
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
/// assert_eq!(Backpressure::default(), Backpressure::Block);
/// let settings = WriteBack::default()
///     .backpressure(Backpressure::Fail)
///     .queue_capacity(1)
///     .max_delay(Duration::MAX);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Db::default(), settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// assert_eq!(cache.put(2, 20), Err(WriteError::QueueFull));
/// assert_eq!(cache.get(&2), Ok(None)); // nothing was changed
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backpressure {
    /// Wait until the flusher makes room (the default).
    #[default]
    Block,
    /// Return [`WriteError::QueueFull`](crate::WriteError::QueueFull) at once; nothing is changed.
    Fail,
}
