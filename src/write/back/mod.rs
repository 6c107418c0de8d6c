//! The write-back queue and its flusher thread.
//!
//! Every accepted write gets a sequence number and a slot under its key. A
//! slot holds up to three versions of the key's latest write: the one
//! *waiting* to be sent (later writes replace it: coalescing), the one being
//! *sent* in the current batch, and the last one that *failed* and has not been
//! reported yet. Reads of a dirty key take the first present of the three, so
//! they see the latest acknowledged write whether or not the cache still holds
//! the entry.
//!
//! One flusher thread sends batches one at a time, so two writes to one key
//! can never be in flight together and reach the store in the order they
//! were accepted.

mod flusher;
mod handle;
pub(crate) use handle::Reservation;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Instant;

use foldhash::fast::RandomState;
use hashbrown::HashMap;

use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Condvar, Mutex, MutexGuard};

use super::{
    sealed, FailedWrite, Failure, KeyLocks, Op, Store, WriteBack, WritePolicy, WriteStats,
};

/// Write-back: `put` and `delete` update the cache and queue the write; a
/// flusher thread sends queued writes to the store in batches. Built with
/// [`CacheBuilder::write_back`](crate::CacheBuilder::write_back), which
/// takes the [`WriteBack`] settings. The cache's calls are `get`,
/// `get_all`, `refresh`, `put`, `put_with`, `delete`, `put_all`,
/// `write_all`, `flush`, `close`, `write_stats` and the `_async` twins.
///
/// # Guarantees
///
/// - **Nothing acknowledged is dropped.** A write that `put` or `delete`
///   accepted stays queued when its cached entry is evicted, expires or is
///   invalidated. Until the store has it, or it was given up on and reported
///   (or handed to the failure handler), `get` returns it, never an older
///   value from the store.
/// - **Per-key order.** One flusher thread sends one batch at a time, so a
///   key's writes reach the store in the order they were accepted.
/// - **Coalescing and batching.** A write of a key whose previous write is
///   still waiting replaces it. A batch of up to [`batch`](WriteBack::batch)
///   writes is due when that many keys wait or the oldest has waited
///   [`max_delay`](WriteBack::max_delay) (at once on `flush`, `close`, or a
///   writer waiting for room), and goes out when the flusher is free.
/// - **Failures.** A batch that fails (an error or a panic of the store) is
///   sent again up to [`retries`](WriteBack::retries) times, with a doubling
///   backoff. A write that still fails is given up on and reported once:
///   by the next `flush` or `close`, as a [`FailedWrite`] (the write, the last
///   error, the attempts), which also drops the key's cached copy unless a
///   newer write of the key is pending; or, with
///   [`on_write_failure`](crate::CacheBuilder::on_write_failure), to the
///   handler, on the flusher thread, as soon as it is given up. A failure
///   that a later, stored write of the same key supersedes is not reported.
/// - **Backpressure.** At most [`queue_capacity`](WriteBack::queue_capacity)
///   keys are dirty at once (waiting, being sent, or failed and unreported);
///   a write of another key then waits for room ([`Backpressure::Block`](crate::Backpressure::Block)) or
///   returns [`WriteError::QueueFull`](crate::WriteError::QueueFull) and changes nothing
///   ([`Backpressure::Fail`](crate::Backpressure::Fail)). A failed write keeps its room until it is
///   reported or handed to the handler, so a store that stays down fills the
///   queue, not memory. A writer waits for room holding no lock, so a `flush`
///   that frees it always finishes.
/// - **Shutdown.** `close` refuses further writes ([`WriteError::Closed`](crate::WriteError::Closed)),
///   sends everything queued and stops the flusher thread; calling it again,
///   even concurrently, is harmless. Dropping the last handle does the same
///   but waits at most [`drop_wait`](WriteBack::drop_wait), and can only print
///   to stderr how many writes failed or are still unsent. If a panic in a
///   key's or value's `Clone`, `Hash` or `Eq` kills the flusher, each key's
///   latest unsent write is reported failed by the next `flush` or `close`
///   (it reads as the key's value until then), and later writes get
///   [`WriteError::Closed`](crate::WriteError::Closed). A key's or value's
///   `Drop` that panics on the flusher, once it is done with a write, does
///   not stop it: the panic is swallowed there.
/// - **Crashes.** A crash loses what was queued: the latest writes of at most
///   `queue_capacity` keys. A write is due once it has waited `max_delay`, but
///   it is sent only when the flusher is free, so a slow or failing store
///   keeps writes queued for longer.
///
/// Writes may be sent more than once, so the store's writes must be
/// idempotent (see [`Store`]).
///
/// ```
/// # use std::collections::HashMap;
/// # use std::sync::{Arc, Mutex};
/// # use larder::{Op, Store};
/// # #[derive(Clone, Default)]
/// # struct Db(Arc<Mutex<HashMap<u32, u32>>>);
/// # impl Db {
/// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
/// # }
/// # impl Store<u32, u32> for Db {
/// #     type Error = std::convert::Infallible;
/// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
/// #     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
/// #         let mut db = self.0.lock().unwrap();
/// #         match op {
/// #             Op::Put(k, v) => db.insert(*k, *v),
/// #             Op::Delete(k) => db.remove(k),
/// #         };
/// #         Ok(())
/// #     }
/// # }
/// use larder::{Cache, WriteBack};
///
/// let db = Db::default(); // an in-memory `Store`, shared with the cache
/// let cache = Cache::builder()
///     .max_capacity(10)
///     .write_back(db.clone(), WriteBack::default())
///     .build()
///     .unwrap();
/// for k in 0..100 {
///     cache.put(k, k).unwrap(); // acknowledged at once, sent in batches
/// }
/// assert!(cache.len() <= 10);
/// assert!((0..100).all(|k| cache.get(&k) == Ok(Some(k)))); // cached or not
/// cache.close().unwrap();
/// assert!((0..100).all(|k| db.get(k) == Some(k)));
/// ```
pub struct WriteBehind<K, V, St: Store<K, V>> {
    pub(crate) shared: Arc<Shared<K, V, St>>,
    /// Dropped with the last handle: closes the queue, waiting a bounded time.
    _owner: Arc<Owner<K, V, St>>,
}

impl<K, V, St: Store<K, V>> Clone for WriteBehind<K, V, St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _owner: Arc::clone(&self._owner),
        }
    }
}

impl<K, V, St: Store<K, V>> fmt::Debug for WriteBehind<K, V, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// What `flush` or `close` took to report: the given-up writes with their
/// sequence numbers, which `WriteBehind::settled` needs should the report be
/// put back. The caller hands on a [`FlushError`](super::FlushError).
#[derive(Debug)]
pub(crate) struct Report<K, V, E> {
    pub(crate) failed: Vec<(u64, FailedWrite<K, V, E>)>,
    /// The hashes the report counted in `Queue::reported`, for `settled`
    /// to take back.
    pub(crate) hashes: Vec<u64>,
}

/// A queued write, without its key (the slot's key).
#[derive(Debug, Clone)]
pub(crate) enum Pending<V> {
    Put(V),
    Delete,
}

impl<V> Pending<V> {
    fn into_op<K>(self, key: K) -> Op<K, V> {
        match self {
            Pending::Put(v) => Op::Put(key, v),
            Pending::Delete => Op::Delete(key),
        }
    }
}

/// What the queue lets go of while its lock is held, dropped once the lock
/// is released: a key's or value's `Drop` may call into the cache, whose
/// reads and writes take that lock, or take a lock that a caller of the
/// cache holds while it waits for this one.
pub(super) struct Bin<K, V> {
    pub(super) writes: Vec<Pending<V>>,
    pub(super) ops: Vec<Op<K, V>>,
    pub(super) keys: Vec<K>,
}

impl<K, V> Default for Bin<K, V> {
    fn default() -> Self {
        Self {
            writes: Vec::new(),
            ops: Vec::new(),
            keys: Vec::new(),
        }
    }
}

/// A dirty key's versions (see the module docs).
struct Slot<V> {
    /// The first sequence number since it last left, and the latest write.
    waiting: Option<(u64, Pending<V>)>,
    sending: Option<Pending<V>>,
    failed: Option<(u64, Pending<V>)>,
    /// A given-up write on its way to the failure handler, with its place
    /// among the writes handed over together: the key reads as it until the
    /// handler has been called with it (see `Queue::handing`), so that a read
    /// never falls back to the store's older value before anyone was told of
    /// the failure.
    handing: Option<(usize, Pending<V>)>,
}

impl<V> Slot<V> {
    fn is_empty(&self) -> bool {
        self.waiting.is_none()
            && self.sending.is_none()
            && self.failed.is_none()
            && self.handing.is_none()
    }

    /// Holds nothing but a write on its way to the failure handler: it
    /// takes no queue room (a handler may write to the cache).
    fn only_handing(&self) -> bool {
        self.handing.is_some()
            && self.waiting.is_none()
            && self.sending.is_none()
            && self.failed.is_none()
    }
}

/// A key with a waiting write, in the order keys became dirty.
struct Queued<K> {
    seq: u64,
    key: K,
    at: Instant,
}

struct Queue<K, V, E> {
    slots: HashMap<K, Slot<V>, RandomState>,
    order: VecDeque<Queued<K>>,
    /// The last sequence number handed out (the first is 1).
    seq: u64,
    /// The lowest sequence number in the batch being sent.
    sending_from: Option<u64>,
    /// `flush` asked for every write up to this one to be sent now.
    flush_to: u64,
    /// Writers waiting for room.
    blocked: usize,
    /// Given-up writes not yet reported, by sequence number; those put back
    /// after a report (see `WriteBehind::settled`) among them. A map, not a
    /// list in sequence order: a stored write drops its key's failure from
    /// the middle, and once a store came back after an outage, writing the
    /// failed keys again shifted the rest of the list each time (40,000
    /// rewrites took 1.1 s under the queue lock).
    failed: BTreeMap<u64, FailedWrite<K, V, E>>,
    closing: bool,
    /// The flusher thread is running.
    running: bool,
    /// The flusher thread, for `close` called from it (a failure handler).
    flusher_id: Option<thread::ThreadId>,
    /// The last handle was dropped before the flusher finished: failures it
    /// meets from then on can only go to stderr. Holds the sequence numbers
    /// of the failures in `failed` that the drop's own message counted, in
    /// order (a stored write may take one out of `failed` meanwhile, so a
    /// count would not do).
    abandoned: Option<Vec<u64>>,
    stats: WriteStats,
    /// Async `flush` / `close` callers to wake on progress.
    wakers: super::Wakers,
    /// The flusher is handing given-up writes to the failure handler (their
    /// slots hold them meanwhile, in `Slot::handing`): a `flush` waits for
    /// that too.
    handing: bool,
    /// Slots holding nothing but such a write: they take no queue room.
    handing_only: usize,
    /// Entries of `failed` that no slot holds (a failure with a newer write
    /// of its key waiting or failed after it, a report put back): each takes
    /// queue room as a dirty key does, until reported.
    loose: usize,
    /// Units of room held by `compute` calls for the write they may make
    /// (see [`Reservation`]): taken from the room
    /// before the call reads its key, so that the write it decides on
    /// always fits, given back when it is queued or not made. (With
    /// `Fail`, a compute of a dirty key holds none: see
    /// `WriteBehind::try_reserve`.)
    reserved: usize,
    /// Reports taken and not yet settled by their caller (see
    /// `WriteBehind::settled`), and the keys stored meanwhile, each with the
    /// sequence number of its latest stored write: a report put back must
    /// not bring back a failure a later stored write superseded.
    reports_out: usize,
    stored_while_out: HashMap<K, u64, RandomState>,
    /// The hashes (by the slots' hasher) of the keys in the reports out,
    /// with how many of their writes: only those keys' stored writes are
    /// kept in `stored_while_out`. Without it, reports overlapping without
    /// end (two callers flushing, a slow listener) kept every key stored
    /// meanwhile: 22 bytes a stored key, without bound.
    reported: HashMap<u64, usize, RandomState>,
    /// Set when the flusher died with writes queued or in a batch: each such
    /// key's latest write was left in its slot as failed, under a sequence
    /// number from this one on, to be reported (and to read as dirty) until
    /// then; with why it died.
    dead: Option<(u64, &'static str)>,
}

pub(crate) struct Shared<K, V, St: Store<K, V>> {
    store: St,
    settings: WriteBack,
    queue: Mutex<Queue<K, V, St::Error>>,
    /// Wakes the flusher.
    work: Condvar,
    /// Wakes writers waiting for room, `flush` and `close`.
    progress: Condvar,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// Takes given-up writes as they happen, instead of `flush` reporting them.
    /// Set by the builder; a later call replaces an earlier one.
    on_failure: Mutex<Option<FailureHandler<K, V, St::Error>>>,
    /// Serializes the cache update and the queue update of writes to one key.
    pub(crate) locks: KeyLocks,
}

/// A write-back cache's failure handler.
pub(crate) type FailureHandler<K, V, E> = Arc<dyn Fn(FailedWrite<K, V, E>) + Send + Sync>;

struct Owner<K, V, St: Store<K, V>> {
    shared: Arc<Shared<K, V, St>>,
}

impl<K: Hash + Eq, V: Clone, E> Queue<K, V, E> {
    /// Whether a write of `key` fits: its key is dirty already (it coalesces
    /// or waits behind its own slot), or the dirty keys and the failures
    /// held by no slot (`loose`) leave room. A slot holding only a write on
    /// its way to the failure handler is not dirty: it takes no room, and a
    /// write of its key needs room like any other.
    ///
    /// A write behind its key's write in flight or failed gets in free only
    /// while the loose failures alone leave room: should the earlier write
    /// fail with this one waiting, its failure is held for its report by no
    /// slot, and a key written again and again against a store that is down
    /// would otherwise pile up failures without bound. Replacing a waiting
    /// write adds nothing and always fits.
    fn has_room(&self, key: &K, capacity: usize) -> bool {
        self.has_room_for_all(&[key], capacity)
    }

    /// [`has_room`](Self::has_room) for writes of all of `keys` (distinct)
    /// at once: the keys not dirty yet fit together, and a write behind its
    /// key's write in flight or failed gets in under the same condition as
    /// alone.
    fn has_room_for_all(&self, keys: &[&K], capacity: usize) -> bool {
        let (new, behind) = self.needs(keys);
        let dirty = self.slots.len() - self.handing_only;
        (new == 0 || dirty + self.loose + self.reserved + new <= capacity)
            && (!behind || self.loose < capacity)
    }

    /// The units of room writes of `keys` need (the keys not dirty), and
    /// whether any is behind its key's write in flight or failed.
    fn needs(&self, keys: &[&K]) -> (usize, bool) {
        let mut new = 0;
        let mut behind = false;
        for key in keys {
            match self.slots.get(*key) {
                Some(s) if s.waiting.is_some() => {}
                Some(s) if !s.only_handing() => behind = true,
                _ => new += 1,
            }
        }
        (new, behind)
    }

    /// Whether a unit of room can be held for a write not decided yet (see
    /// [`Reservation`]): as for a key not dirty, whatever
    /// the key, since a write of it that would coalesce now may find it in
    /// flight by the time it is queued.
    fn has_room_to_reserve(&self, capacity: usize) -> bool {
        let dirty = self.slots.len() - self.handing_only;
        dirty + self.loose + self.reserved < capacity
    }

    /// The copies of `key` a write of it needs filed: one for a new slot,
    /// one for its place in the order unless it has a waiting write to
    /// coalesce with. Made before anything is filed, so that a `Clone`
    /// that panics leaves the queue as it was.
    fn copies_of(&self, key: &K) -> (Option<K>, Option<K>)
    where
        K: Clone,
    {
        match self.slots.get(key) {
            Some(slot) if slot.waiting.is_some() => (None, None),
            Some(_) => (None, Some(key.clone())),
            None => (Some(key.clone()), Some(key.clone())),
        }
    }

    /// The lowest sequence number still waiting or being sent.
    fn outstanding_from(&self) -> Option<u64> {
        let waiting = self.order.front().map(|q| q.seq);
        match (self.sending_from, waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the next batch into `batch` (empty) if one is due: full, asked
    /// for, old enough, or needed to make room or to close. True if it did.
    ///
    /// The batch is the caller's: should a key's `Hash` or `Eq` or a value's
    /// `Clone` panic on the way, the copies taken so far go down with the
    /// caller's frame, after the lock, and the writes not yet taken stay
    /// queued, for `stopped` to report.
    fn take_batch(
        &mut self,
        now: Instant,
        settings: &WriteBack,
        batch: &mut Vec<(u64, Op<K, V>)>,
    ) -> bool
    where
        K: Clone,
    {
        let Some(front) = self.order.front() else {
            return false;
        };
        let due = self.closing
            || self.blocked > 0
            || !self.wakers.is_empty()
            || self.order.len() >= settings.batch
            || self.flush_to >= front.seq
            || now.saturating_duration_since(front.at) >= settings.max_delay;
        if !due {
            return false;
        }
        let n = self.order.len().min(settings.batch);
        batch.reserve_exact(n);
        for _ in 0..n {
            let Some(queued) = self.order.front() else {
                break;
            };
            let slot = self
                .slots
                .get_mut(&queued.key)
                .expect("a queued key has a slot");
            // Clone before taking: should the value's `Clone` panic, the
            // write is still in its slot for `stopped` to report.
            let (seq, copy) = slot
                .waiting
                .as_ref()
                .map(|(seq, write)| (*seq, write.clone()))
                .expect("a queued key has a waiting write");
            slot.sending = slot.waiting.take().map(|(_, write)| write);
            let Some(queued) = self.order.pop_front() else {
                unreachable!("the key was at the front a moment ago");
            };
            batch.push((seq, copy.into_op(queued.key)));
        }
        self.sending_from = batch.first().map(|(seq, _)| *seq);
        true
    }

    /// Books a sent batch: stored, or given up on and held for reporting.
    /// With `hand_over`, given-up writes go to `handed` (for the failure
    /// handler) instead of being kept for `flush` to report.
    ///
    /// What the booking lets go of goes to `bin`, for the caller to drop
    /// once the lock is released. The batch stays the caller's too: each op
    /// is taken out of it only after the last user code (its key's `Hash`
    /// and `Eq`, the failure's `Clone`) that booking it runs, so that a
    /// panic there leaves what was not yet booked, and the writes handed
    /// over so far, to be dropped by the caller after the lock.
    fn settle(
        &mut self,
        seqs: &[u64],
        batch: &mut [Option<Op<K, V>>],
        sent: &Sent<E>,
        hand_over: bool,
        bin: &mut Bin<K, V>,
        handed: &mut Vec<FailedWrite<K, V, E>>,
    ) {
        for (&seq, taken) in seqs.iter().zip(batch.iter_mut()) {
            let Some(op) = taken.as_ref() else {
                continue;
            };
            let slot = self.slots.get_mut(op.key()).expect("a sent key has a slot");
            let write = slot.sending.take().expect("a sent key is being sent");
            match &sent.failure {
                None => {
                    self.stats.stored += 1;
                    bin.writes.push(write);
                    // A stored write supersedes an older failed one: it is
                    // no longer read, nor reported (replaying it would write
                    // an older value over this one).
                    let held = match slot.failed.take() {
                        Some((seq, failed)) => {
                            bin.writes.push(failed);
                            Some(seq)
                        }
                        None => None,
                    };
                    // Only the slot's own failure, or failures held by no
                    // slot (`loose`), may be of this key: with neither, the
                    // scan is skipped (it made each stored write cost a pass
                    // over every unreported failure, under the queue lock).
                    if (held.is_some() || self.loose > 0) && !self.failed.is_empty() {
                        let before = self.failed.len();
                        // With no loose failures, the slot's own is the only
                        // one of this key: found by its sequence number
                        // (`failed` is in sequence order, and a number names
                        // one write), without comparing keys. A key written
                        // again once the store is back after an outage
                        // compared every unreported failure's.
                        let own = match held {
                            Some(seq) if self.loose == 0 => self.failed.remove(&seq),
                            _ => None,
                        };
                        if let Some(gone) = own {
                            bin.ops.push(gone.op);
                        } else {
                            // Else the keys compared first (user code that
                            // may panic), before anything moves.
                            let doomed: Vec<u64> = self
                                .failed
                                .iter()
                                .filter(|(_, f)| f.op.key() == op.key())
                                .map(|(&seq, _)| seq)
                                .collect();
                            for seq in doomed {
                                if let Some(gone) = self.failed.remove(&seq) {
                                    bin.ops.push(gone.op);
                                }
                            }
                        }
                        let removed = before - self.failed.len();
                        self.stats.superseded += removed as u64;
                        // All but the one the slot held, if it held one.
                        self.loose -= removed.saturating_sub(usize::from(held.is_some()));
                    }
                    if slot.is_empty() {
                        if let Some((key, _)) = self.slots.remove_entry(op.key()) {
                            bin.keys.push(key);
                        }
                    }
                    let reported = self.reports_out > 0
                        && self
                            .reported
                            .contains_key(&self.slots.hasher().hash_one(op.key()));
                    if reported {
                        // The sent write's own key, not a clone: a `Clone`
                        // panicking here would kill the flusher with the
                        // batch half booked, and the rest of it, which the
                        // store has, would be reported failed.
                        match self.stored_while_out.get_mut(op.key()) {
                            Some(stored) => {
                                *stored = seq;
                                bin.ops.extend(taken.take());
                            }
                            None => {
                                // The value goes to the bin, not down with
                                // the op here, under the lock. (Should the
                                // key's `Hash` panic in the insert, the key
                                // is dropped in it.)
                                let key = match taken.take() {
                                    Some(Op::Put(key, value)) => {
                                        bin.writes.push(Pending::Put(value));
                                        key
                                    }
                                    Some(Op::Delete(key)) => key,
                                    None => unreachable!("the op is still in the batch"),
                                };
                                self.stored_while_out.insert(key, seq);
                            }
                        }
                    } else {
                        bin.ops.extend(taken.take());
                    }
                }
                Some(failure) => {
                    self.stats.failed += 1;
                    if slot.waiting.is_none() {
                        // The key's latest write: it reads as the key's
                        // value until reported, or until the handler has it.
                        if hand_over {
                            if let Some((_, before)) = slot.handing.replace((handed.len(), write)) {
                                bin.writes.push(before);
                            }
                            if slot.only_handing() {
                                self.handing_only += 1;
                            }
                        } else {
                            // An older failure of the key the slot held
                            // stays in `failed`, held by no slot now.
                            if let Some((_, older)) = slot.failed.replace((seq, write)) {
                                self.loose += 1;
                                bin.writes.push(older);
                            }
                        }
                    } else {
                        if !hand_over {
                            // Kept for its report only: a newer write waits.
                            self.loose += 1;
                        }
                        bin.writes.push(write);
                    }
                    if hand_over && slot.is_empty() {
                        if let Some((key, _)) = self.slots.remove_entry(op.key()) {
                            bin.keys.push(key);
                        }
                    }
                    // The last user code of this op's booking.
                    let failure = failure.clone();
                    let Some(op) = taken.take() else {
                        unreachable!("the op is still in the batch");
                    };
                    let failed = FailedWrite {
                        op,
                        failure,
                        attempts: sent.attempts,
                    };
                    if hand_over {
                        handed.push(failed);
                    } else {
                        self.failed.insert(seq, failed);
                    }
                }
            }
        }
        self.sending_from = None;
    }
}

/// How a batch fared: the attempts made, and the last failure if all failed.
struct Sent<E> {
    attempts: u32,
    failure: Option<Failure<E>>,
}

impl<K, V, St: Store<K, V>> Shared<K, V, St> {
    /// Releases the queue and wakes everyone waiting for it to move: blocked
    /// writers, `flush` and `close`, sync and async. A waker's panic is
    /// raised once all are woken.
    fn progressed(&self, q: MutexGuard<'_, Queue<K, V, St::Error>>) {
        if let Some(payload) = self.wake_waiting(q) {
            if !std::thread::panicking() {
                std::panic::resume_unwind(payload);
            }
        }
    }

    /// [`progressed`](Self::progressed) for the flusher, which goes on past
    /// a waker's panic: it has no caller to raise it to, and dying would
    /// fail every write still queued.
    fn progressed_quietly(&self, q: MutexGuard<'_, Queue<K, V, St::Error>>) {
        drop(self.wake_waiting(q));
    }

    /// Releases the queue and wakes its waiters; the first waker's panic.
    fn wake_waiting(
        &self,
        mut q: MutexGuard<'_, Queue<K, V, St::Error>>,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        let wakers: Vec<_> = q.wakers.take().collect();
        drop(q);
        self.progress.notify_all();
        crate::sync::wake_each(wakers)
    }
}

impl<K, V, St> Drop for Owner<K, V, St>
where
    St: Store<K, V>,
{
    /// The last handle is gone: close the queue and wait, up to the
    /// configured bound, for the flusher to drain it.
    fn drop(&mut self) {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        q.closing = true;
        shared.work.notify_all();
        shared.progress.notify_all();
        let deadline = Instant::now().checked_add(shared.settings.drop_wait);
        // Dropped on the flusher itself (by a failure handler): it cannot
        // wait for itself; it stops once the handler returns.
        let on_flusher = q.flusher_id == Some(thread::current().id());
        while q.running && !on_flusher {
            match deadline {
                Some(deadline) => {
                    let timed_out;
                    (q, timed_out) = shared.progress.wait_until(q, deadline);
                    if timed_out {
                        break;
                    }
                }
                None => q = shared.progress.wait(q),
            }
        }
        // What a dead flusher left in the slots is failed and unreported too.
        let dead = q.dead.map_or(0, |(from, _)| {
            q.slots
                .values()
                .filter(|s| s.failed.as_ref().is_some_and(|(seq, _)| *seq >= from))
                .count()
        });
        let failed = q.failed.len() + dead;
        let unsent = q
            .slots
            .values()
            .filter(|s| s.waiting.is_some() || s.sending.is_some())
            .count();
        // Failures the flusher meets from now on have nobody to go to.
        q.abandoned = q.running.then(|| q.failed.keys().copied().collect());
        // A flusher that has stopped is joined, as `close` joins it: it holds
        // the store until its thread ends, and a store's `Drop` (a buffer to
        // flush, a connection to shut) must have run when the drop returns.
        let stopped = !q.running && !on_flusher;
        drop(q);
        if failed > 0 || unsent > 0 {
            // Nobody is left to report to: say so rather than drop silently.
            tell_stderr(format_args!(
                "larder: a write-back cache was dropped with {failed} write(s) its store \
                 refused and {unsent} not yet stored (still queued or being sent; the \
                 flusher goes on with them); call `close()` to receive every outcome"
            ));
        }
        if stopped {
            let flusher = shared.flusher.lock().take();
            if let Some(flusher) = flusher {
                join_by(flusher, deadline);
            }
        }
    }
}

impl<K, V, St> sealed::Sealed for WriteBehind<K, V, St>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    fn start(&self) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        self.shared.queue.lock().running = true;
        let spawned = thread::Builder::new()
            .name("larder-flusher".into())
            .spawn(move || shared.run());
        match spawned {
            Ok(handle) => {
                self.shared.queue.lock().flusher_id = Some(handle.thread().id());
                *self.shared.flusher.lock() = Some(handle);
                Ok(())
            }
            Err(e) => {
                self.shared.queue.lock().running = false;
                Err(e)
            }
        }
    }
}

impl<K, V, St> WritePolicy for WriteBehind<K, V, St>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
}

#[cfg(all(test, larder_loom))]
mod loom_models {
    //! The write-back queue under loom: a writer thread, the caller and the
    //! flusher thread share one queue lock and two condition variables.
    //! Whatever the interleaving, `flush` returns only once every write
    //! accepted before it reached the store, writes to one key reach it in
    //! the order they were accepted, a read of a dirty key sees its latest
    //! write, a unit of room held for a write (`compute`'s reservation)
    //! keeps the queue within its capacity and wakes the writers waiting
    //! for it when given back, a compute of a dirty key holding none (with
    //! `Fail`) files as a put would, and nobody waits forever (loom reports
    //! a deadlock otherwise).
    use super::*;
    use crate::write::sealed::Sealed;
    use crate::WriteError;
    use std::time::Duration;

    /// Every write the store received, in order. (A std lock: loom threads
    /// run one at a time, and the queue lock orders the flusher's sends
    /// before the caller's reads.)
    #[derive(Default)]
    struct Log(std::sync::Mutex<Vec<(u8, u32)>>);

    impl Store<u8, u32> for Log {
        type Error = std::convert::Infallible;
        fn load(&self, _: &u8) -> Result<Option<u32>, Self::Error> {
            Ok(None)
        }
        fn write(&self, op: &Op<u8, u32>) -> Result<(), Self::Error> {
            if let Op::Put(k, v) = op {
                self.0.lock().unwrap().push((*k, *v));
            }
            Ok(())
        }
    }

    impl Log {
        fn of(&self, key: u8) -> Vec<u32> {
            let log = self.0.lock().unwrap();
            log.iter()
                .filter(|(k, _)| *k == key)
                .map(|&(_, v)| v)
                .collect()
        }
    }

    fn queue(batch: usize) -> WriteBehind<u8, u32, Log> {
        let settings = WriteBack {
            // Every write is due at once: loom has no clock to wait on.
            max_delay: Duration::ZERO,
            batch,
            ..WriteBack::default()
        };
        let wb = WriteBehind::new(Log::default(), settings);
        wb.start().expect("loom spawns the flusher");
        wb
    }

    fn put(wb: &WriteBehind<u8, u32, Log>, key: u8, value: u32) {
        wb.accept(&key, Pending::Put(value)).expect("accepted");
    }

    #[test]
    fn flush_sees_every_write_accepted_before_it_in_order() {
        loom::model(|| {
            let wb = queue(1);
            let writer = {
                let wb = wb.clone();
                thread::spawn(move || {
                    put(&wb, 1, 1);
                    put(&wb, 1, 2);
                })
            };
            put(&wb, 2, 20);
            wb.flush().expect("nothing fails");
            assert_eq!(wb.store().of(2), vec![20], "flushed write missing");
            // The writer's writes may or may not be in yet, but never out of
            // order, and a read sees the latest one.
            let seen = wb.store().of(1);
            assert!(
                seen.is_empty() || seen == [1] || seen == [2] || seen == [1, 2],
                "{seen:?}"
            );
            writer.join().unwrap();
            let dirty = wb.lookup(&1).map(|w| match w {
                Pending::Put(v) => v,
                Pending::Delete => unreachable!("no deletes"),
            });
            assert!(dirty.is_none() || dirty == Some(2), "stale read {dirty:?}");
            wb.flush().expect("nothing fails");
            assert_eq!(wb.store().of(1).last(), Some(&2), "latest write lost");
            wb.close().expect("nothing fails");
            assert_eq!(wb.stats().dirty, 0);
        });
    }

    #[test]
    fn a_writer_blocked_on_a_full_queue_is_let_in() {
        loom::model(|| {
            let settings = WriteBack {
                max_delay: Duration::ZERO,
                queue_capacity: 1,
                ..WriteBack::default()
            };
            let wb = WriteBehind::new(Log::default(), settings);
            wb.start().expect("loom spawns the flusher");
            let writer = {
                let wb = wb.clone();
                thread::spawn(move || put(&wb, 1, 1))
            };
            // Room for one dirty key: one of the two writes may wait for the
            // flusher to send the other.
            put(&wb, 2, 2);
            writer.join().unwrap();
            wb.close().expect("nothing fails");
            assert_eq!(wb.store().of(1), vec![1]);
            assert_eq!(wb.store().of(2), vec![2]);
        });
    }

    /// A queue of `capacity` keys' room, every write due at once.
    fn queue_of(capacity: usize) -> WriteBehind<u8, u32, Log> {
        let settings = WriteBack {
            max_delay: Duration::ZERO,
            queue_capacity: capacity,
            ..WriteBack::default()
        };
        let wb = WriteBehind::new(Log::default(), settings);
        wb.start().expect("loom spawns the flusher");
        wb
    }

    /// A queue of one key's room, for the reservations' models.
    fn queue_of_one() -> WriteBehind<u8, u32, Log> {
        queue_of(1)
    }

    /// A unit of room for a write of `key`, as `compute` takes it: waiting
    /// while there is none.
    fn reserve(wb: &WriteBehind<u8, u32, Log>, key: u8) -> Reservation<'_, u8, u32, Log> {
        loop {
            match wb.try_reserve(&key).expect("the queue is open") {
                Some(reservation) => return reservation,
                None => wb.wait_to_reserve(),
            }
        }
    }

    /// A batch of `keys`, as `put_all` queues it: whole, waiting for room
    /// for all of them at once.
    fn put_all(wb: &WriteBehind<u8, u32, Log>, keys: &[u8]) {
        let refs: Vec<&u8> = keys.iter().collect();
        let mut writes: Vec<_> = keys
            .iter()
            .map(|&k| Some(Pending::Put(u32::from(k))))
            .collect();
        while wb
            .try_accept_all(&refs, &mut writes)
            .expect("the queue is open")
            .is_none()
        {
            wb.wait_for_room_all(&refs);
        }
        assert!(wb.stats().queued <= 2, "the queue overflowed");
    }

    #[test]
    fn a_batch_waiting_for_room_and_single_writers_all_get_in() {
        loom::model(|| {
            let wb = queue_of(2);
            let batch = {
                let wb = wb.clone();
                thread::spawn(move || put_all(&wb, &[1, 2]))
            };
            // These may take room before the batch, or after it, but
            // never more than there is.
            put(&wb, 3, 3);
            assert!(wb.stats().queued <= 2, "the queue overflowed");
            put(&wb, 4, 4);
            assert!(wb.stats().queued <= 2, "the queue overflowed");
            batch.join().unwrap();
            wb.close().expect("nothing fails");
            for key in 1..=4 {
                assert_eq!(wb.store().of(key), vec![u32::from(key)]);
            }
        });
    }

    #[test]
    fn a_compute_of_a_dirty_key_holding_no_room_never_overflows_the_queue() {
        loom::model(|| {
            let settings = WriteBack {
                max_delay: Duration::ZERO,
                queue_capacity: 1,
                backpressure: crate::Backpressure::Fail,
                ..WriteBack::default()
            };
            let wb = WriteBehind::new(Log::default(), settings);
            wb.start().expect("loom spawns the flusher");
            put(&wb, 1, 1);
            let writer = {
                let wb = wb.clone();
                thread::spawn(move || {
                    let put = wb.accept(&2, Pending::Put(2));
                    assert!(wb.stats().queued <= 1, "the queue overflowed");
                    put.is_ok()
                })
            };
            // Key 1 is dirty, unless the flusher has stored it already: a
            // compute of it then holds no room (`Fail`), and its write gets
            // in as a put of key 1 would, or is refused.
            let filed = match wb.try_reserve(&1) {
                Ok(Some(reservation)) => {
                    let mut write = Some(Pending::Put(10));
                    match wb.file_reserved(reservation, &1, &mut write) {
                        Ok(filed) => {
                            assert!(write.is_none(), "the write was not taken");
                            drop(filed);
                            true
                        }
                        Err(WriteError::QueueFull) => false,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                Ok(None) => unreachable!("with `Fail` nobody waits"),
                Err(WriteError::QueueFull) => false,
                Err(e) => panic!("{e:?}"),
            };
            assert!(wb.stats().queued <= 1, "the queue overflowed");
            let put_2 = writer.join().unwrap();
            wb.close().expect("nothing fails");
            let of_1 = wb.store().of(1);
            if filed {
                assert!(of_1 == [10] || of_1 == [1, 10], "{of_1:?}");
            } else {
                assert_eq!(of_1, [1]);
            }
            assert_eq!(wb.store().of(2), if put_2 { vec![2] } else { vec![] });
        });
    }

    #[test]
    fn a_reservation_given_back_unfiled_lets_a_blocked_writer_in() {
        loom::model(|| {
            let wb = queue_of_one();
            let writer = {
                let wb = wb.clone();
                thread::spawn(move || put(&wb, 1, 1))
            };
            // The writer may be waiting for the one unit held here; dropping
            // it unfiled (a compute that keeps) must wake it, as the flusher,
            // with nothing queued, never would.
            drop(reserve(&wb, 1));
            writer.join().unwrap();
            wb.close().expect("nothing fails");
            assert_eq!(wb.store().of(1), vec![1]);
        });
    }

    #[test]
    fn a_reserved_write_fits_whatever_another_writer_does() {
        loom::model(|| {
            let wb = queue_of_one();
            let writer = {
                let wb = wb.clone();
                thread::spawn(move || put(&wb, 2, 2))
            };
            let reservation = reserve(&wb, 1);
            // Filed without waiting, whatever the writer did meanwhile: the
            // room was held, so the queue holds no more than it may.
            let mut write = Some(Pending::Put(1));
            let (let_go, reservation) = wb
                .file_reserved(reservation, &1, &mut write)
                .expect("the queue is open");
            assert!(write.is_none(), "the write was not taken");
            assert!(wb.stats().queued <= 1, "the queue overflowed");
            drop((let_go, reservation));
            writer.join().unwrap();
            wb.close().expect("nothing fails");
            assert_eq!(wb.store().of(1), vec![1]);
            assert_eq!(wb.store().of(2), vec![2]);
        });
    }
}

/// Joins the flusher, which has left its loop, unless it is still running
/// user code (a key's or value's `Drop` on what it let go of) when the
/// `deadline` of `drop_wait` passes: that code could be waiting for the
/// thread that drops the cache. A join error (the flusher panicked outside
/// the store's calls) needs nothing more: `stopped` reported what it left.
fn join_by(flusher: JoinHandle<()>, deadline: Option<Instant>) {
    #[cfg(not(larder_loom))]
    if let Some(deadline) = deadline {
        while !flusher.is_finished() {
            if Instant::now() >= deadline {
                // Left to end on its own, as a flusher the wait gave up on.
                return;
            }
            thread::sleep(std::time::Duration::from_micros(50));
        }
    }
    #[cfg(larder_loom)]
    let _ = deadline;
    let _ = flusher.join();
}

/// Writes a line to stderr, for what a dropped cache can tell nobody else.
/// Unlike `eprintln!` it never panics: a drop may run while its thread
/// unwinds, and a closed or broken stderr would then abort the process.
fn tell_stderr(message: fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}
