//! The calls a write-back cache makes on its queue: accepting a write (or
//! waiting, sync or async, for room), reading a key's pending write, and
//! `flush` and `close` with the failures they report.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use hashbrown::HashMap;

use super::super::{
    Backpressure, FailedWrite, Failure, Forget, KeyLocks, Op, Store, Waiter, Wakers, WriteBack,
    WriteError, WriteStats,
};
use super::{
    Bin, FailureHandler, Owner, Pending, Queue, Queued, Report, Shared, Slot, WriteBehind,
};
use crate::sync::thread;
use crate::sync::{Condvar, Mutex, MutexGuard};

impl<K, V, St> WriteBehind<K, V, St>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    pub(crate) fn new(store: St, settings: WriteBack) -> Self {
        let shared = Arc::new(Shared {
            store,
            settings,
            queue: Mutex::new(Queue {
                slots: HashMap::default(),
                order: VecDeque::new(),
                seq: 0,
                sending_from: None,
                flush_to: 0,
                blocked: 0,
                failed: BTreeMap::new(),
                closing: false,
                running: false,
                flusher_id: None,
                abandoned: None,
                stats: WriteStats::default(),
                wakers: Wakers::default(),
                handing: false,
                handing_only: 0,
                loose: 0,
                reserved: 0,
                reports_out: 0,
                stored_while_out: HashMap::default(),
                reported: HashMap::default(),
                dead: None,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            flusher: Mutex::new(None),
            on_failure: Mutex::new(None),
            locks: KeyLocks::new(),
        });
        Self {
            _owner: Arc::new(Owner {
                shared: Arc::clone(&shared),
            }),
            shared,
        }
    }

    pub(crate) fn store(&self) -> &St {
        &self.shared.store
    }

    /// Hands given-up writes to `handler` from now on, instead of any
    /// handler set before (the builder sets it, before the flusher starts).
    pub(crate) fn set_failure_handler(&self, handler: FailureHandler<K, V, St::Error>) {
        *self.shared.on_failure.lock() = Some(handler);
    }

    /// Queues a write of `key` if the queue has room for it, taking `write`:
    /// true when queued, false when a [`Backpressure::Block`] writer must
    /// wait for room ([`wait_for_room`](Self::wait_for_room)) and try again.
    /// The caller holds the key's stripe lock, and must let go of it before
    /// waiting: a `flush` may need the stripe to finish the report that makes
    /// the room.
    pub(crate) fn try_accept(
        &self,
        key: &K,
        write: &mut Option<Pending<V>>,
    ) -> Result<Option<LetGo<V>>, WriteError<St::Error>> {
        let shared = &*self.shared;
        let q = shared.queue.lock();
        if q.closing || !q.running {
            // Closed, or the flusher is gone (see `stopped`): a write taken
            // now would never be sent.
            return Err(WriteError::Closed);
        }
        if !q.has_room(key, shared.settings.queue_capacity) {
            return match shared.settings.backpressure {
                Backpressure::Fail => Err(WriteError::QueueFull),
                Backpressure::Block => Ok(None),
            };
        }
        Ok(Some(self.enqueue(q, key, write)))
    }

    /// Blocks until a write of `key` would find room, or the queue stops
    /// taking writes. The caller holds no stripe lock.
    pub(crate) fn wait_for_room(&self, key: &K) {
        self.wait_for_room_all(&[key]);
    }

    /// [`wait_for_room`](Self::wait_for_room) for async writers: pending,
    /// woken when the flusher makes progress, instead of blocking the thread.
    /// The caller's future calls [`forget`](Self::forget) when it ends.
    pub(crate) fn poll_room(
        &self,
        key: &K,
        waiter: &Waiter,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.poll_room_all(&[key], waiter, cx)
    }

    /// Takes away the waker `waiter` filed, if any: its future is done, or
    /// was dropped while it waited.
    pub(crate) fn forget(&self, waiter: &Waiter) {
        if waiter.filed() {
            self.shared.queue.lock().wakers.forget(waiter);
        }
    }

    /// Queues a write of `key`, waiting for room as configured (for callers
    /// that hold no stripe lock).
    #[cfg(all(test, larder_loom))]
    pub(crate) fn accept(&self, key: &K, write: Pending<V>) -> Result<(), WriteError<St::Error>> {
        let mut write = Some(write);
        while self.try_accept(key, &mut write)?.is_none() {
            self.wait_for_room(key);
        }
        Ok(())
    }

    /// Queues a batch of writes, one per key (`writes[i]` is `keys[i]`'s),
    /// if the queue has room for all of them, taking `writes`: the batch is
    /// accepted whole or not at all. Returns what the writes replaced, for
    /// the caller to drop once it holds no lock, or `None` when a
    /// [`Backpressure::Block`] writer must wait for room
    /// ([`wait_for_room_all`](Self::wait_for_room_all)) and try again. The
    /// caller holds the keys' stripes, and checked the batch against the
    /// queue's capacity ([`check_batch`](Self::check_batch)).
    ///
    /// Should a key's `Clone` panic, nothing is queued; should its `Hash`
    /// or `Eq` panic, the writes filed before it stay queued.
    pub(crate) fn try_accept_all(
        &self,
        keys: &[&K],
        writes: &mut [Option<Pending<V>>],
    ) -> Result<Option<Vec<LetGo<V>>>, WriteError<St::Error>> {
        let shared = &*self.shared;
        // Declared before the lock, so dropped after it should a key's
        // `Hash` or `Eq` panic midway: what the writes filed so far replaced
        // (see `LetGo`), and the copies of the keys not filed yet.
        let mut let_go = Vec::new();
        let mut copies: smallvec::SmallVec<[(Option<K>, Option<K>); 16]> =
            smallvec::SmallVec::with_capacity(keys.len());
        let mut q = shared.queue.lock();
        if q.closing || !q.running {
            return Err(WriteError::Closed);
        }
        if !q.has_room_for_all(keys, shared.settings.queue_capacity) {
            return match shared.settings.backpressure {
                Backpressure::Fail => Err(WriteError::QueueFull),
                Backpressure::Block => Ok(None),
            };
        }
        // Every key's copies before anything is filed, as `enqueue`.
        for key in keys {
            let copy = q.copies_of(key);
            copies.push(copy);
        }
        let new = copies.iter().filter(|(slot, _)| slot.is_some()).count();
        q.slots.reserve(new);
        // One time for the batch: it is queued at once.
        let now = Instant::now();
        for ((key, write), copy) in keys.iter().zip(writes).zip(&mut copies) {
            let filed = self.file(&mut q, key, write, std::mem::take(copy), now);
            // Most writes replace nothing: only the others are kept.
            if filed.holds_anything() {
                let_go.push(filed);
            }
        }
        drop(q);
        Ok(Some(let_go))
    }

    /// Holds a unit of queue room for a write of `key` not decided yet, for
    /// `compute`: the write it decides on then fits whatever other writers
    /// do meanwhile, so it never waits for room holding the key's stripe.
    /// `None` when a [`Backpressure::Block`] caller must wait
    /// ([`wait_to_reserve`](Self::wait_to_reserve)) and try again. The
    /// caller holds no stripe.
    ///
    /// With [`Backpressure::Fail`] and no unit left, a dirty key whose write
    /// would take no new room now (it coalesces with the key's waiting
    /// write, or waits behind its write in flight or failed, as
    /// [`Queue::has_room`] has it) gets a reservation that holds no room,
    /// and [`file_reserved`](Self::file_reserved) checks for room as `put`
    /// does: on a full queue a compute of such a key gets in whenever a
    /// `put` of it would, and is refused after `f` only if its write needs
    /// room by then (the flusher stored or gave up on the key's writes
    /// meanwhile). With a unit free it holds one, as ever, and is never
    /// refused after `f`.
    pub(crate) fn try_reserve(
        &self,
        key: &K,
    ) -> Result<MaybeReserved<'_, K, V, St>, WriteError<St::Error>> {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        if q.closing || !q.running {
            return Err(WriteError::Closed);
        }
        let capacity = shared.settings.queue_capacity;
        if !q.has_room_to_reserve(capacity) {
            return match shared.settings.backpressure {
                Backpressure::Fail if q.needs(&[key]).0 == 0 && q.has_room(key, capacity) => {
                    Ok(Some(Reservation {
                        shared,
                        held: false,
                    }))
                }
                Backpressure::Fail => Err(WriteError::QueueFull),
                Backpressure::Block => Ok(None),
            };
        }
        q.reserved += 1;
        Ok(Some(Reservation { shared, held: true }))
    }

    /// Blocks until [`try_reserve`](Self::try_reserve) would find room, or
    /// the queue stops taking writes. The caller holds no stripe.
    pub(crate) fn wait_to_reserve(&self) {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        while q.running && !q.closing && !q.has_room_to_reserve(shared.settings.queue_capacity) {
            q.blocked += 1;
            shared.work.notify_one();
            q = shared.progress.wait(q);
            q.blocked -= 1;
        }
    }

    /// [`wait_to_reserve`](Self::wait_to_reserve) for async callers:
    /// pending, woken when the queue moves, instead of blocking the thread.
    /// The caller's future calls [`forget`](Self::forget) when it ends.
    pub(crate) fn poll_reserve(
        &self,
        waiter: &Waiter,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        if q.running && !q.closing && !q.has_room_to_reserve(shared.settings.queue_capacity) {
            q.wakers.register(waiter, cx);
            shared.work.notify_one();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(())
    }

    /// Queues a write of `key` in the room `reservation` holds, taking
    /// `write`; returns what it replaced, for the caller to drop once it
    /// holds no lock, with the reservation, for the caller to drop then
    /// too. A write that took a new unit of room took the reservation's,
    /// and the reservation comes back empty; one that took none (it
    /// coalesced, or waits behind its key's write in flight or failed)
    /// leaves it held, so that its drop gives the unit back and wakes the
    /// writers waiting for room. [`WriteError::Closed`] if the queue
    /// stopped taking writes since the room was reserved: nothing is
    /// queued then. A reservation holding no room (see
    /// [`try_reserve`](Self::try_reserve)) files as `put` would:
    /// [`WriteError::QueueFull`] if the write needs room the queue does not
    /// have, nothing queued.
    ///
    /// Should the key's `Clone`, `Hash` or `Eq` panic, nothing is queued,
    /// and the reservation, still held, gives the room back as it drops.
    pub(crate) fn file_reserved<'a>(
        &'a self,
        mut reservation: Reservation<'a, K, V, St>,
        key: &K,
        write: &mut Option<Pending<V>>,
    ) -> Result<Filed<'a, K, V, St>, WriteError<St::Error>> {
        let mut q = self.shared.queue.lock();
        if q.closing || !q.running {
            drop(q);
            // `reservation` gives the room back as it drops.
            return Err(WriteError::Closed);
        }
        if !reservation.held && !q.has_room(key, self.shared.settings.queue_capacity) {
            drop(q);
            return Err(WriteError::QueueFull);
        }
        let copies = q.copies_of(key);
        let takes_room = q.needs(&[key]).0 > 0;
        if copies.0.is_some() {
            q.slots.reserve(1);
        }
        let let_go = self.file(&mut q, key, write, copies, Instant::now());
        if takes_room && reservation.held {
            // The room moves from the reservation to the write.
            q.reserved -= 1;
            reservation.held = false;
        }
        drop(q);
        Ok((let_go, reservation))
    }

    /// A batch of `keys` writes is never accepted: it could need more room
    /// than the queue has.
    pub(crate) fn check_batch(&self, keys: usize) -> Result<(), WriteError<St::Error>> {
        let queue_capacity = self.shared.settings.queue_capacity;
        if keys > queue_capacity {
            return Err(WriteError::BatchTooLarge {
                keys,
                queue_capacity,
            });
        }
        Ok(())
    }

    /// [`wait_for_room`](Self::wait_for_room) for a batch: blocks until
    /// writes of all of `keys` would find room together.
    pub(crate) fn wait_for_room_all(&self, keys: &[&K]) {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        while q.running && !q.closing && !q.has_room_for_all(keys, shared.settings.queue_capacity) {
            q.blocked += 1;
            shared.work.notify_one();
            q = shared.progress.wait(q);
            q.blocked -= 1;
        }
    }

    /// [`poll_room`](Self::poll_room) for a batch, as
    /// [`wait_for_room_all`](Self::wait_for_room_all).
    pub(crate) fn poll_room_all(
        &self,
        keys: &[&K],
        waiter: &Waiter,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        if q.running && !q.closing && !q.has_room_for_all(keys, shared.settings.queue_capacity) {
            q.wakers.register(waiter, cx);
            shared.work.notify_one();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(())
    }

    /// Files an accepted write, taken out of `write`: coalesced into the
    /// key's waiting write, or queued behind the others. Returns what the
    /// write replaced, for the caller to drop once it holds no lock.
    ///
    /// The write stays the caller's until the last of the user code filing
    /// it runs (the key's `Clone`, `Hash` and `Eq`): should that panic, the
    /// value goes down with the caller's frame, after the lock.
    fn enqueue(
        &self,
        mut q: MutexGuard<'_, Queue<K, V, St::Error>>,
        key: &K,
        write: &mut Option<Pending<V>>,
    ) -> LetGo<V> {
        // The key's copies first: a `Clone` that panics leaves the queue as
        // it was (no write filed that is never sent, no room held).
        let copies = q.copies_of(key);
        // Room for a new slot before anything moves: growing rehashes.
        if copies.0.is_some() {
            q.slots.reserve(1);
        }
        let let_go = self.file(&mut q, key, write, copies, Instant::now());
        drop(q);
        let_go
    }

    /// Files `write` under `key` as queued at `now`, given the copies of the
    /// key that [`Queue::copies_of`] made and room for its slot, if new.
    fn file(
        &self,
        q: &mut Queue<K, V, St::Error>,
        key: &K,
        write: &mut Option<Pending<V>>,
        (slot_key, order_key): (Option<K>, Option<K>),
        now: Instant,
    ) -> LetGo<V> {
        let shared = &*self.shared;
        let mut write = || write.take().expect("a write is accepted once");
        // Counted once filed: the key's `Hash` and `Eq` run below.
        let seq = q.seq + 1;
        let queue = &mut *q;
        // The write this one replaces, dropped by the caller once it holds
        // no lock (see `LetGo`).
        let mut replaced = None;
        let mut displaced = None;
        let queued = match (queue.slots.get_mut(key), slot_key) {
            (Some(slot), _) => {
                if slot.only_handing() {
                    // Dirty again: it takes room from now on.
                    queue.handing_only -= 1;
                }
                match &mut slot.waiting {
                    Some((_, latest)) => {
                        replaced = Some(std::mem::replace(latest, write()));
                        false
                    }
                    waiting @ None => {
                        *waiting = Some((seq, write()));
                        true
                    }
                }
            }
            (None, slot_key) => {
                // The key hashed (user code) before the write is taken; the
                // room reserved by the caller, the insert hashes nothing more.
                let slot = |write| Slot {
                    waiting: Some((seq, write)),
                    sending: None,
                    failed: None,
                    handing: None,
                };
                match q.slots.entry(slot_key.expect("copied for a new slot")) {
                    hashbrown::hash_map::Entry::Vacant(vacant) => {
                        vacant.insert(slot(write()));
                    }
                    // Only a key whose `Hash` or `Eq` changed its mind
                    // finds one now; its slot goes as `insert` would.
                    hashbrown::hash_map::Entry::Occupied(mut occupied) => {
                        displaced = Some(occupied.insert(slot(write())));
                    }
                }
                true
            }
        };
        q.seq = seq;
        q.stats.accepted += 1;
        if queued {
            q.order.push_back(Queued {
                seq,
                key: order_key.expect("copied for a queued write"),
                at: now,
            });
            if q.order.len() == 1 || q.order.len() >= shared.settings.batch {
                shared.work.notify_one();
            }
        } else {
            q.stats.coalesced += 1;
        }
        LetGo {
            _replaced: replaced,
            _displaced: displaced,
        }
    }

    /// The latest acknowledged write of `key` the store may not hold yet.
    pub(crate) fn lookup<Q>(&self, key: &Q) -> Option<Pending<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let q = self.shared.queue.lock();
        let latest = q.slots.get(key).and_then(|slot| {
            let waiting = slot.waiting.as_ref().map(|(_, w)| w);
            let failed = slot.failed.as_ref().map(|(_, w)| w);
            waiting
                .or(slot.sending.as_ref())
                .or(slot.handing.as_ref().map(|(_, w)| w))
                .or(failed)
                .cloned()
        });
        // A failure put back after its report could not be delivered left
        // its slot with that report, yet is unreported again: it reads as
        // its key's value until the next report takes it, the newest of them
        // if several reports of the key were put back. Anything in the key's
        // slot is newer (a put-back that a stored write superseded is gone
        // from `failed`). Put-backs are held by no slot, so counted in
        // `loose`: with none, the scan is skipped (a store that is down
        // leaves up to `queue_capacity` failures unreported, and every read
        // of a clean key scanned them all, under the queue lock: 1,000
        // misses went from under 1 ms to 0.3–0.4 s with 60,000 of them).
        if q.loose == 0 {
            return latest;
        }
        latest.or_else(|| {
            let (_, failed) = q
                .failed
                .iter()
                .rev()
                .find(|(_, f)| f.op.key().borrow() == key)?;
            Some(match &failed.op {
                Op::Put(_, v) => Pending::Put(v.clone()),
                Op::Delete(_) => Pending::Delete,
            })
        })
    }

    /// Sends everything accepted before the call and reports what failed.
    pub(crate) fn flush(&self) -> Result<(), Report<K, V, St::Error>> {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        let target = q.seq;
        q.flush_to = q.flush_to.max(target);
        shared.work.notify_one();
        // On the flusher itself (a failure handler calling `flush`), waiting
        // for the flusher would wait forever: report what there is.
        let on_flusher = q.flusher_id == Some(thread::current().id());
        while !on_flusher
            && q.running
            && (q.handing || q.outstanding_from().is_some_and(|s| s <= target))
        {
            q = shared.progress.wait(q);
        }
        report(shared, q)
    }

    /// Refuses further writes, sends everything queued, stops the flusher and
    /// reports what failed. A second call reports only what failed since.
    pub(crate) fn close(&self) -> Result<(), Report<K, V, St::Error>> {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        q.closing = true;
        let on_flusher = q.flusher_id == Some(thread::current().id());
        shared.work.notify_all();
        shared.progressed(q);
        if on_flusher {
            // A failure handler closing the cache: the flusher stops once the
            // handler returns; there is nothing to wait for here.
            return report(shared, shared.queue.lock());
        }
        let flusher = shared.flusher.lock().take();
        if let Some(flusher) = flusher {
            // A join error (the flusher panicked outside the store's calls)
            // needs nothing more: `stopped` reported what it left.
            let _ = flusher.join();
        }
        // A second `close` finds no thread to join: it waits the same.
        let mut q = shared.queue.lock();
        while q.running {
            q = shared.progress.wait(q);
        }
        report(shared, q)
    }

    /// [`flush`](Self::flush), awaiting instead of blocking.
    pub(crate) async fn flush_async(&self) -> Result<(), Report<K, V, St::Error>> {
        let shared = &*self.shared;
        let target = {
            let mut q = shared.queue.lock();
            q.flush_to = q.flush_to.max(q.seq);
            if q.flusher_id == Some(thread::current().id()) {
                // On the flusher (a failure handler), as `flush`: report
                // what there is rather than wait for the flusher itself.
                return report(shared, q);
            }
            q.seq
        };
        shared.work.notify_one();
        let waiter = Waiter::new();
        let _forget = Forget(|| self.forget(&waiter));
        std::future::poll_fn(|cx| {
            let mut q = shared.queue.lock();
            if q.running && (q.handing || q.outstanding_from().is_some_and(|s| s <= target)) {
                q.wakers.register(&waiter, cx);
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        report(shared, shared.queue.lock())
    }

    /// [`close`](Self::close), awaiting instead of blocking.
    pub(crate) async fn close_async(&self) -> Result<(), Report<K, V, St::Error>> {
        let shared = &*self.shared;
        {
            let mut q = shared.queue.lock();
            if q.flusher_id == Some(thread::current().id()) {
                // On the flusher (a failure handler): `close` does not wait.
                drop(q);
                return self.close();
            }
            q.closing = true;
            shared.work.notify_all();
            shared.progressed(q);
        }
        let waiter = Waiter::new();
        let _forget = Forget(|| self.forget(&waiter));
        std::future::poll_fn(|cx| {
            let mut q = shared.queue.lock();
            if q.running {
                q.wakers.register(&waiter, cx);
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        // The thread has left its loop; joining it now does not block.
        self.close()
    }

    /// The caller of `flush` or `close` is done with the report it took:
    /// `unreported` holds what it could not hand on (a listener panicked
    /// while it dropped the failed keys' cached copies), put back for the next
    /// report, less what a write stored meanwhile superseded: a write of the
    /// same key with a later sequence number. Until then a put-back write
    /// reads as its key's value (see `lookup`).
    pub(crate) fn settled(&self, unreported: Report<K, V, St::Error>) {
        settle(&self.shared, unreported);
    }

    pub(crate) fn stats(&self) -> WriteStats {
        let q = self.shared.queue.lock();
        let dirty = q.slots.len() - q.handing_only;
        WriteStats {
            dirty: dirty as u64,
            queued: (dirty + q.loose) as u64,
            ..q.stats
        }
    }
}

/// [`settled`](WriteBehind::settled)'s work, for a report that could not be
/// handed on.
fn settle<K, V, St>(shared: &Shared<K, V, St>, unreported: Report<K, V, St::Error>)
where
    K: Hash + Eq,
    St: Store<K, V>,
{
    // Declared before the guard: what is let go of is dropped after the
    // lock (see `Bin`), and each write stays here until the key's `Hash`
    // and `Eq` (which may panic) have run for it.
    let mut failed: Vec<_> = unreported.failed.into_iter().map(Some).collect();
    let mut bin = Bin::default();
    let mut q = shared.queue.lock();
    let checked = catch_unwind(AssertUnwindSafe(|| {
        for write in &mut failed {
            let Some((seq, f)) = write.as_ref() else {
                continue;
            };
            let stored = q.stored_while_out.get(f.op.key());
            let superseded = stored.is_some_and(|stored| stored > seq);
            let Some((seq, f)) = write.take() else {
                continue;
            };
            if superseded {
                q.stats.superseded += 1;
                bin.ops.push(f.op);
            } else {
                q.failed.insert(seq, f);
                q.loose += 1;
            }
        }
    }));
    // Should a key's `Hash` or `Eq` have panicked, the writes not looked
    // up go back unchecked: reported again, not lost.
    // Reports keep each key's writes in the order they were accepted
    // (`failed` is by sequence number), however many reports were put
    // back, in what order.
    for (seq, f) in failed.into_iter().flatten() {
        q.failed.insert(seq, f);
        q.loose += 1;
    }
    for hash in &unreported.hashes {
        if let Some(count) = q.reported.get_mut(hash) {
            *count -= 1;
            if *count == 0 {
                q.reported.remove(hash);
            }
        }
    }
    q.reports_out -= 1;
    if q.reports_out == 0 {
        let stored = q.stored_while_out.drain().map(|(key, _)| key);
        bin.keys.extend(stored);
        q.stored_while_out.shrink_to_fit();
        q.reported.clear();
    }
    drop(q);
    drop(bin);
    if let Err(panic) = checked {
        resume_unwind(panic);
    }
}

/// What [`WriteBehind::try_reserve`] holds: `None` when a
/// [`Backpressure::Block`] caller must wait for room.
pub(crate) type MaybeReserved<'a, K, V, St> = Option<Reservation<'a, K, V, St>>;

/// What [`WriteBehind::file_reserved`] hands back: what the write
/// replaced, and the reservation, for the caller to drop once it holds no
/// lock.
pub(crate) type Filed<'a, K, V, St> = (LetGo<V>, Reservation<'a, K, V, St>);

/// A unit of queue room held for a write not decided yet (see
/// [`WriteBehind::try_reserve`]): given back, waking the writers waiting
/// for room, when dropped unfiled (the write was not made, or the call
/// making it failed or panicked).
pub(crate) struct Reservation<'a, K, V, St: Store<K, V>> {
    shared: &'a Shared<K, V, St>,
    held: bool,
}

impl<K, V, St: Store<K, V>> Drop for Reservation<'_, K, V, St> {
    fn drop(&mut self) {
        if self.held {
            let mut q = self.shared.queue.lock();
            q.reserved -= 1;
            self.shared.progressed(q);
        }
    }
}

/// What filing a write let go of (the waiting write it replaced; a slot a
/// key whose `Hash` or `Eq` changed its mind displaced), handed to the
/// writer to drop once it holds no lock: not the queue's (see `Bin`), nor
/// the key's stripe, which `put` and `delete` hold until the cache has
/// the write. A value's `Drop` that writes to the cache takes that stripe
/// again if the key, or another of its stripe, is the one it writes.
#[must_use = "dropped once the caller holds no lock"]
pub(crate) struct LetGo<V> {
    _replaced: Option<Pending<V>>,
    _displaced: Option<Slot<V>>,
}

impl<V> LetGo<V> {
    fn holds_anything(&self) -> bool {
        self._replaced.is_some() || self._displaced.is_some()
    }
}

/// Takes the unreported failures; their keys stop reading as dirty.
fn report<K, V, St>(
    shared: &Shared<K, V, St>,
    mut q: MutexGuard<'_, Queue<K, V, St::Error>>,
) -> Result<(), Report<K, V, St::Error>>
where
    K: Hash + Eq,
    St: Store<K, V>,
{
    let mut failed: Vec<_> = std::mem::take(&mut q.failed).into_iter().collect();
    let mut loose = std::mem::take(&mut q.loose);
    if let Some((from, reason)) = q.dead {
        let mut dead: Vec<_> = q
            .slots
            .extract_if(|_, slot| slot.failed.as_ref().is_some_and(|(seq, _)| *seq >= from))
            .filter_map(|(key, slot)| {
                let (seq, write) = slot.failed?;
                let failed = FailedWrite {
                    op: write.into_op(key),
                    failure: Failure::FlusherStopped(reason),
                    attempts: 0,
                };
                Some((seq, failed))
            })
            .collect();
        dead.sort_unstable_by_key(|(seq, _)| *seq);
        // Their slots are gone: held by no slot, should the report go back.
        loose += dead.len();
        failed.extend(dead);
    }
    if failed.is_empty() {
        return Ok(());
    }
    // The keys' slots let go of what the report takes. Should a key's `Hash`
    // or `Eq` panic on the way, the report goes back whole, to be taken by
    // the next one (until then, each write a slot let go of takes room as
    // one held by no slot; the others stay their slots'), and the panic on
    // to the caller.
    // What the slots let go of is dropped once the lock is released (see
    // `Bin`).
    let mut bin = Bin::default();
    let mut hashes = Vec::with_capacity(failed.len());
    let released = catch_unwind(AssertUnwindSafe(|| {
        for (seq, write) in &failed {
            let key = write.op.key();
            hashes.push(q.slots.hasher().hash_one(key));
            if let Some(slot) = q.slots.get_mut(key) {
                if slot.failed.as_ref().is_some_and(|(s, _)| s == seq) {
                    if let Some((_, write)) = slot.failed.take() {
                        // Held by no slot now, should the report go back.
                        loose += 1;
                        bin.writes.push(write);
                    }
                }
                if slot.is_empty() {
                    if let Some((key, _)) = q.slots.remove_entry(key) {
                        bin.keys.push(key);
                    }
                }
            }
        }
    }));
    if let Err(panic) = released {
        // Loose: those no slot held before, and those whose slot let go of
        // them above. The rest are still their slots' (counting them again
        // took each such key's queue room twice, until the next report).
        q.loose = loose;
        q.failed = failed.into_iter().collect();
        // A slot emptied above but not removed (the key's `Hash` panicked
        // removing it) must not take room as a dirty key: taken out without
        // hashing.
        bin.keys.extend(
            q.slots
                .extract_if(|_, slot| slot.is_empty())
                .map(|(key, _)| key),
        );
        drop(q);
        drop(bin);
        resume_unwind(panic);
    }
    // Settled by the caller (`WriteBehind::settled`).
    q.reports_out += 1;
    for &hash in &hashes {
        *q.reported.entry(hash).or_default() += 1;
    }
    let report = Report { failed, hashes };
    // A waker's panic, or a key's or value's `Drop` panicking on what the
    // slots let go of, must not take the report down with it: it goes back
    // for the next `flush` or `close` to report (as after a listener's panic
    // in `forget_failed`), and the panic on to the caller.
    let woken = catch_unwind(AssertUnwindSafe(|| shared.progressed(q)));
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(bin)));
    if let Some(panic) = woken.err().or(dropped.err()) {
        settle(shared, report);
        resume_unwind(panic);
    }
    Err(report)
}
