//! The flusher thread: it waits for a due batch (full, old enough, or asked
//! for by `flush`), sends it to the store with retries and backoff, books
//! the outcome in the queue, and hands given-up writes to the failure
//! handler; should it die, what it held is left in the slots as failed.

use std::cell::Cell;
use std::hash::Hash;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use super::super::{Failure, Op, Store};
use super::{Bin, Sent, Shared};

impl<K, V, St> Shared<K, V, St>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
{
    /// The flusher thread's loop: wait for a due batch, send it, book it.
    pub(super) fn run(self: Arc<Self>) {
        // The writes being handed over, and how many of them the handler
        // has been called with: if the flusher dies on the way (dropping
        // the payload of a handler's panic can panic), those are not
        // reported again.
        let (handing, delivered) = (Cell::new(0), Cell::new(0));
        let _stopped = OnDrop(|| self.stopped(handing.get(), delivered.get()));
        loop {
            // Before the guard (see `take_batch`).
            let mut batch = Vec::new();
            {
                let mut q = self.queue.lock();
                loop {
                    if q.take_batch(Instant::now(), &self.settings, &mut batch) {
                        break;
                    }
                    if q.closing && q.order.is_empty() {
                        return;
                    }
                    let due = q
                        .order
                        .front()
                        .and_then(|f| f.at.checked_add(self.settings.max_delay));
                    q = match due {
                        Some(due) => self.work.wait_until(q, due).0,
                        None => self.work.wait(q),
                    };
                }
            }
            // The store borrows the batch's own writes, which `settle` then
            // takes apart: no key or value is cloned (user code that may
            // panic) between the store taking a batch and its booking.
            let (seqs, ops): (Vec<u64>, Vec<Op<K, V>>) = batch.into_iter().unzip();
            let sent = self.send(&ops);
            let handler = self.on_failure.lock().clone();
            // Before the guard: should `settle` panic (a key's `Hash` or
            // `Eq`, a failure's `Clone`), the lock is released before what
            // it had let go of, what it had handed over and the rest of the
            // batch are dropped.
            let mut batch: Vec<Option<Op<K, V>>> = ops.into_iter().map(Some).collect();
            let mut handed = Vec::new();
            let mut bin = Bin::default();
            let mut q = self.queue.lock();
            // Before `settle` marks any write as being handed over: it runs
            // user code (the keys' `Hash` and `Eq`), which may panic.
            handing.set(0);
            delivered.set(0);
            q.settle(
                &seqs,
                &mut batch,
                &sent,
                handler.is_some(),
                &mut bin,
                &mut handed,
            );
            handing.set(handed.len());
            q.handing = !handed.is_empty();
            self.progressed_quietly(q);
            // What the batch let go of is the flusher's to drop, and a
            // panicking `Drop` of a key or value is theirs: the flusher goes
            // on (it has nobody to raise it to, and dying would fail every
            // write still queued).
            drop_quietly(bin);
            drop_ops_quietly(batch.into_iter().flatten());
            if let (Some(handler), false) = (handler, handed.is_empty()) {
                for failed in handed {
                    // The handler's panic is its own; the flusher goes on.
                    let outcome = catch_unwind(AssertUnwindSafe(|| handler(failed)));
                    delivered.set(delivered.get() + 1);
                    drop(outcome);
                }
                let mut q = self.queue.lock();
                // The handler has them all: their keys read as the cache
                // (or the store) has them from now on.
                let mut bin = Bin::default();
                let emptied = q.slots.extract_if(|_, slot| {
                    if let Some((_, write)) = slot.handing.take() {
                        bin.writes.push(write);
                    }
                    slot.is_empty()
                });
                bin.keys.extend(emptied.map(|(key, _)| key));
                q.handing_only = 0;
                q.handing = false;
                self.progressed_quietly(q);
                drop_quietly(bin);
            }
        }
    }

    /// Marks the flusher stopped, however it ended. It ends with writes
    /// still queued or in a batch only when a panic outside the store's calls
    /// (a key's or value's `Clone`, `Hash` or `Eq`) killed it: each such key's
    /// latest write is then failed rather than dropped — it still reads as the
    /// key's value until the next `flush` or `close` reports it — and from
    /// then on writes are refused ([`WriteError::Closed`](crate::WriteError::Closed)). Of the `handed`
    /// writes being handed to the failure handler, the first `delivered`
    /// reached it; the others are failed like the rest, or superseded when
    /// their key has a newer write (which is failed in their place).
    fn stopped(&self, handed: usize, delivered: usize) {
        // What the queue lets go of is dropped after the lock (see `Bin`).
        let mut bin = Bin::default();
        let mut q = self.queue.lock();
        q.running = false;
        bin.keys.extend(q.order.drain(..).map(|queued| queued.key));
        q.sending_from = None;
        let reason = if std::thread::panicking() {
            "the flusher thread panicked"
        } else {
            "the flusher stopped"
        };
        // No user code runs here (no `Clone`, no `Hash`, no `Eq`): this may
        // run while the thread unwinds from a panic in it, when a second one
        // aborts. So each slot keeps its latest write in place, as failed:
        // the key reads it until `report` takes it out (with the key, no
        // clone needed) and reports it.
        let queue = &mut *q;
        let from = queue.seq + 1;
        let mut left = 0;
        // Undelivered writes that are their key's latest (the others had a
        // newer write waiting when they were given up on: superseded).
        let mut latest_undelivered = 0;
        for slot in queue.slots.values_mut() {
            // The waiting write is the latest; one in a batch was older, and
            // is given up on too, but only the latest is reported.
            // A write on its way to the failure handler that never reached
            // it (the flusher died handing it over) is reported instead.
            // (It was counted as failed when it was given up on.) One that
            // reached it is done with.
            let handing = match slot.handing.take() {
                Some((at, write)) if at >= delivered => Some(write),
                Some((_, delivered)) => {
                    bin.writes.push(delivered);
                    None
                }
                None => None,
            };
            latest_undelivered += usize::from(handing.is_some());
            let (write, counted) = match (slot.waiting.take(), slot.sending.take()) {
                (Some((_, waiting)), Some(sending)) => {
                    bin.writes.push(sending);
                    queue.stats.failed += 1;
                    queue.stats.superseded += 1;
                    (waiting, false)
                }
                (Some((_, write)), None) => {
                    if let Some(superseded) = handing {
                        // A newer write took its place.
                        queue.stats.superseded += 1;
                        bin.writes.push(superseded);
                    }
                    (write, false)
                }
                (None, Some(write)) => (write, false),
                (None, None) => match handing {
                    Some(write) => (write, true),
                    None => continue,
                },
            };
            queue.seq += 1;
            if !counted {
                queue.stats.failed += 1;
            }
            // An older failure of the key, if any, is in `failed` already,
            // held by no slot now.
            if let Some((_, older)) = slot.failed.replace((queue.seq, write)) {
                queue.loose += 1;
                bin.writes.push(older);
            }
            left += 1;
        }
        // Slots that held only a write the handler got.
        bin.keys.extend(
            queue
                .slots
                .extract_if(|_, slot| slot.is_empty())
                .map(|(key, _)| key),
        );
        queue.handing_only = 0;
        queue.stats.superseded += handed
            .saturating_sub(delivered)
            .saturating_sub(latest_undelivered) as u64;
        if left > 0 {
            queue.dead = Some((from, reason));
        }
        // The failures the drop's own message counted are not counted again.
        if let Some(told) = &q.abandoned {
            let untold = q
                .failed
                .keys()
                .filter(|seq| told.binary_search(seq).is_err());
            let lost = untold.count() + left;
            if lost > 0 {
                super::tell_stderr(format_args!(
                    "larder: the store refused {lost} write(s) of a write-back cache after its \
                     last handle was dropped; they are lost"
                ));
            }
        }
        self.progressed_quietly(q);
    }

    /// Sends one batch, retrying with backoff.
    fn send(&self, ops: &[Op<K, V>]) -> Sent<St::Error> {
        let mut wait = self.settings.backoff.min(self.settings.max_backoff);
        // Counted in u64: with `retries(u32::MAX, ..)` the last attempt is
        // the 2^32nd, which a u32 count could not pass.
        let mut tried: u64 = 0;
        loop {
            tried += 1;
            let attempts = u32::try_from(tried).unwrap_or(u32::MAX);
            {
                // Counted as the call starts, for `write_stats` during an
                // outage's retries.
                let mut q = self.queue.lock();
                q.stats.store_calls += 1;
                q.stats.retries += u64::from(tried > 1);
            }
            let failure = match catch_unwind(AssertUnwindSafe(|| self.store.write_batch(ops))) {
                Ok(Ok(())) => {
                    return Sent {
                        attempts,
                        failure: None,
                    }
                }
                Ok(Err(e)) => Failure::Store(Arc::new(e)),
                Err(panic) => Failure::Panicked(panic_message(panic.as_ref())),
            };
            if tried > u64::from(self.settings.retries) {
                return Sent {
                    attempts,
                    failure: Some(failure),
                };
            }
            std::thread::sleep(wait);
            wait = wait.saturating_mul(2).min(self.settings.max_backoff);
        }
    }
}

/// Runs its closure when dropped, however the scope ends.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Drops what `bin` holds one by one, swallowing each panic of a `Drop`
/// (see the flusher's loop): one at a time, so that a second panic does not
/// meet the first one's unwinding, which would abort.
fn drop_quietly<K, V>(bin: Bin<K, V>) {
    let Bin { writes, ops, keys } = bin;
    writes.into_iter().for_each(drop_one_quietly);
    drop_ops_quietly(ops);
    keys.into_iter().for_each(drop_one_quietly);
}

/// [`drop_quietly`] for writes, a key and a value apart.
fn drop_ops_quietly<K, V>(ops: impl IntoIterator<Item = Op<K, V>>) {
    for op in ops {
        match op {
            Op::Put(key, value) => {
                drop_one_quietly(key);
                drop_one_quietly(value);
            }
            Op::Delete(key) => drop_one_quietly(key),
        }
    }
}

fn drop_one_quietly<T>(item: T) {
    let _ = catch_unwind(AssertUnwindSafe(|| drop(item)));
}
