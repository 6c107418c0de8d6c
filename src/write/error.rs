//! What a store-backed cache's calls return when the store or the queue
//! refuses: [`WriteError`] for one write, [`FlushError`] for what a flush
//! or a close could not write, with the writes themselves handed back.

use std::fmt;
use std::sync::Arc;

use super::Op;

/// Why a `put` or `delete` (or a batch of them, `put_all` or `write_all`)
/// was not accepted. Nothing was changed.
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
/// use larder::{Cache, WriteError};
///
/// let db = Db::default(); // an in-memory `Store`; it refuses values over 100
/// let cache = Cache::builder().max_capacity(100).write_through(db).build().unwrap();
/// match cache.put(1, 500) {
///     Err(WriteError::Store(e)) => assert_eq!(e, "too large"),
///     Err(WriteError::QueueFull | WriteError::Closed) => unreachable!("write-back only"),
///     Err(other) => unreachable!("{other}"), // the enum may grow
///     Ok(()) => unreachable!("refused"),
/// }
/// let closed = WriteError::<&str>::Closed;
/// assert_eq!(closed.to_string(), "the write-back cache is closed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError<E> {
    /// The store refused a write-through write.
    Store(E),
    /// A write-back queue is full and the cache was built with
    /// [`Backpressure::Fail`](crate::Backpressure::Fail).
    QueueFull,
    /// The write-back cache was closed.
    Closed,
    /// A write-back batch (`put_all` or `write_all`) has more keys than
    /// [`queue_capacity`](crate::WriteBack::queue_capacity), whatever the
    /// queue holds: it would need more room than the queue has once its
    /// keys are clean. Nothing is changed. Split it, or build the cache
    /// with a larger capacity.
    BatchTooLarge {
        /// The batch's distinct keys.
        keys: usize,
        /// The queue's capacity, in keys.
        queue_capacity: usize,
    },
}

impl<E: fmt::Display> fmt::Display for WriteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Store(e) => write!(f, "the store refused the write: {e}"),
            WriteError::QueueFull => f.write_str("the write-back queue is full"),
            WriteError::Closed => f.write_str("the write-back cache is closed"),
            WriteError::BatchTooLarge {
                keys,
                queue_capacity,
            } => write!(
                f,
                "the batch writes {keys} keys, more than the write-back queue holds ({queue_capacity})"
            ),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for WriteError<E> {}

/// Why a write-back write was given up on.
///
/// ```
/// use std::time::Duration;
/// use larder::{Cache, Failure, Op, Store, WriteBack};
///
/// struct Down; // a store that refuses every write
/// impl Store<u32, u32> for Down {
///     type Error = &'static str;
///     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
///     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Err("down") }
/// }
/// let settings = WriteBack::default().retries(0, Duration::ZERO);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Down, settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// let report = cache.flush().unwrap_err();
/// match &report.failed[0].failure {
///     Failure::Store(e) => assert_eq!(**e, "down"),
///     other => unreachable!("{other}"),
/// }
/// let panicked = Failure::<&str>::Panicked("boom".into());
/// assert_eq!(panicked.to_string(), "the store panicked: boom");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure<E> {
    /// The store's error on the last attempt (shared by the batch).
    Store(Arc<E>),
    /// The store panicked on the last attempt, with this message.
    Panicked(String),
    /// The write was never sent: the flusher thread stopped first, with
    /// this reason ("the flusher thread panicked" when a panic in a key's or
    /// value's `Clone`, `Hash` or `Eq` killed it). Its
    /// [`attempts`](FailedWrite::attempts) is 0.
    FlusherStopped(&'static str),
}

impl<E> Clone for Failure<E> {
    fn clone(&self) -> Self {
        match self {
            Failure::Store(e) => Failure::Store(Arc::clone(e)),
            Failure::Panicked(m) => Failure::Panicked(m.clone()),
            Failure::FlusherStopped(m) => Failure::FlusherStopped(m),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Failure<E> {}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Store(e) => write!(f, "{e}"),
            Failure::Panicked(m) => write!(f, "the store panicked: {m}"),
            Failure::FlusherStopped(m) => write!(f, "not sent: {m}"),
        }
    }
}

/// An acknowledged write-back write that the store did not take after every
/// retry. Until it is reported, a read of its key returns its value.
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
/// use larder::{Cache, Failure, Op, WriteBack};
///
/// let settings = WriteBack::default().retries(1, Duration::ZERO);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Down, settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// let report = cache.flush().unwrap_err();
/// let failed = &report.failed[0];
/// assert_eq!(failed.op, Op::Put(1, 10));
/// assert_eq!(failed.attempts, 2); // the first try and one retry
/// assert!(matches!(failed.failure, Failure::Store(_)));
/// ```
#[derive(Debug, Clone)]
pub struct FailedWrite<K, V, E> {
    /// The write.
    pub op: Op<K, V>,
    /// Why the last attempt failed.
    pub failure: Failure<E>,
    /// How many times it was sent; 0 when the flusher thread died before
    /// booking it (see [`Failure::FlusherStopped`]).
    pub attempts: u32,
}

/// Writes the store did not take, reported by `flush` or `close`.
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
/// cache.delete(&2).unwrap();
/// let report = cache.flush().unwrap_err();
/// let ops: Vec<_> = report.failed.iter().map(|f| f.op.clone()).collect();
/// assert_eq!(ops, [Op::Put(1, 10), Op::Delete(2)]);
/// assert_eq!(report.to_string(), "2 write(s) failed after every retry; first: down");
/// assert!(cache.flush().is_ok()); // each failure is reported once
/// ```
#[derive(Debug)]
pub struct FlushError<K, V, E> {
    /// Each given-up write, in the order they were given up.
    pub failed: Vec<FailedWrite<K, V, E>>,
}

impl<K, V, E: fmt::Display> fmt::Display for FlushError<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} write(s) failed after every retry", self.failed.len())?;
        if let Some(first) = self.failed.first() {
            write!(f, "; first: {}", first.failure)?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug, V: fmt::Debug, E: fmt::Debug + fmt::Display> std::error::Error
    for FlushError<K, V, E>
{
}
