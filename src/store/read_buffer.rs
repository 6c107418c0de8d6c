//! A lossy, bounded, multi-producer ring of read tokens, one per shard.
//!
//! Readers append the token of the entry they hit while holding the shard's map
//! lock for reading; whoever holds the shard's *policy* lock drains the ring into
//! the policy. The policy lock is not the lookup lock, so a drain never blocks a
//! lookup. A token may be stale by the time it is drained (its entry removed, its
//! slot reused): the policy ignores tokens it does not hold, and a reused slot
//! only misattributes one read.
//!
//! A reader that finds the ring full drains it if the policy lock is free and
//! then applies its own read, behind the reads recorded before it. The read
//! is dropped when that lock is taken, when the drain stops short at a slot
//! claimed but not written yet, or when the reader loses the race for a slot
//! twice: that happens only under
//! contention and only costs the policy a little precision. A drain hands each
//! slot back as it takes its token, so readers arriving meanwhile find room.
//! Single-threaded, no read is ever lost (the reader that fills the ring
//! drains it at once), so one shard's order is exactly the policy's.

use crate::store::Token;
use crate::sync::{AtomicU32, Ordering};

/// Reads buffered per shard before a drain.
#[cfg(not(larder_loom))]
pub(crate) const READ_BUFFER_LEN: u32 = 64;
/// Small under loom so the models reach the full-ring path.
#[cfg(larder_loom)]
pub(crate) const READ_BUFFER_LEN: u32 = 2;

/// A slot claimed by a producer that has not written its token yet.
const EMPTY: Token = Token::MAX;

/// Attempts to claim a slot before a contended read is dropped.
const CLAIM_ATTEMPTS: usize = 2;

#[derive(Debug)]
pub(crate) struct ReadBuffer {
    /// Next slot to claim; only ever advanced by producers.
    tail: AtomicU32,
    /// Next slot to drain; only advanced under the policy lock.
    head: AtomicU32,
    slots: [AtomicU32; READ_BUFFER_LEN as usize],
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self {
            tail: AtomicU32::new(0),
            head: AtomicU32::new(0),
            slots: std::array::from_fn(|_| AtomicU32::new(EMPTY)),
        }
    }
}

/// What became of a read offered to the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// In the ring, with room left.
    Buffered,
    /// In the ring, which it filled: the ring wants draining.
    Filled,
    /// Not in the ring, which was full: the ring wants draining, and the
    /// read applying after it.
    Full,
    /// Not in the ring: other readers won the slots it tried for.
    Dropped,
}

impl ReadBuffer {
    /// Records a read of `token`. When the ring is (or becomes) full, the
    /// caller `try_lock`s the policy to drain it (it never waits).
    #[inline]
    pub(crate) fn record(&self, token: Token) -> Recorded {
        for _ in 0..CLAIM_ATTEMPTS {
            // Acquire pairs with the drainer's release of `head`: the slot we claim
            // was emptied before it was handed back.
            let head = self.head.load(Ordering::Acquire);
            let tail = self.tail.load(Ordering::Relaxed);
            let size = tail.wrapping_sub(head);
            if size >= READ_BUFFER_LEN {
                return Recorded::Full;
            }
            if self
                .tail
                .compare_exchange(
                    tail,
                    tail.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.slots[(tail % READ_BUFFER_LEN) as usize].store(token, Ordering::Release);
                if size + 1 >= READ_BUFFER_LEN {
                    return Recorded::Filled;
                }
                return Recorded::Buffered;
            }
        }
        Recorded::Dropped
    }

    /// Applies buffered reads to `apply`, oldest first. Must only be called with
    /// the shard's policy lock held (a single consumer at a time). False when
    /// it stopped short at a slot claimed but not written yet: reads recorded
    /// before the call may then still be in the ring.
    pub(crate) fn drain(&self, mut apply: impl FnMut(Token)) -> bool {
        let mut head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        while head != tail {
            let slot = &self.slots[(head % READ_BUFFER_LEN) as usize];
            let token = slot.load(Ordering::Acquire);
            if token == EMPTY {
                // Claimed but not yet written: the next drain picks it up.
                return false;
            }
            slot.store(EMPTY, Ordering::Relaxed);
            head = head.wrapping_add(1);
            // Handed back before the token is applied, slot by slot: a reader
            // arriving during the drain finds room instead of a full ring (and,
            // the policy lock being taken, dropping its read).
            self.head.store(head, Ordering::Release);
            apply(token);
        }
        true
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_reports_full() {
        let buf = ReadBuffer::default();
        for t in 0..READ_BUFFER_LEN - 1 {
            assert_eq!(buf.record(t), Recorded::Buffered);
        }
        assert_eq!(buf.record(999), Recorded::Filled);
        assert_eq!(
            buf.record(1000),
            Recorded::Full,
            "a full ring keeps asking for a drain"
        );
        let mut seen = Vec::new();
        buf.drain(|t| seen.push(t));
        assert_eq!(seen.len(), READ_BUFFER_LEN as usize);
        assert_eq!(seen[0], 0);
        assert_eq!(*seen.last().unwrap(), 999);
        buf.drain(|_| panic!("drained twice"));
    }

    #[test]
    fn wraps_around_many_laps() {
        let buf = ReadBuffer::default();
        let mut seen = Vec::new();
        for t in 0..10_000 {
            if buf.record(t) == Recorded::Filled {
                buf.drain(|t| seen.push(t));
            }
        }
        buf.drain(|t| seen.push(t));
        assert_eq!(seen, (0..10_000).collect::<Vec<_>>());
    }

    /// A read recorded while a drain runs finds the room the drain made: the
    /// ring used to look full until the drain ended, and a reader then (the
    /// policy lock being the drainer's) dropped its read.
    #[test]
    fn a_drain_makes_room_as_it_goes() {
        let buf = ReadBuffer::default();
        for t in 0..READ_BUFFER_LEN {
            buf.record(t);
        }
        let mut seen = Vec::new();
        let mut during = Vec::new();
        buf.drain(|t| {
            if t == 0 {
                during.push(buf.record(500));
            }
            seen.push(t);
        });
        assert_eq!(during, vec![Recorded::Filled]);
        assert_eq!(seen, (0..READ_BUFFER_LEN).collect::<Vec<_>>());
        buf.drain(|t| seen.push(t));
        assert_eq!(seen.last(), Some(&500), "the read made during the drain");
    }
}

#[cfg(all(test, larder_loom))]
mod loom_models {
    //! The ring under loom, with the shard's locking: producers record while
    //! holding the map's read lock and drain through `try_lock` on the policy;
    //! a writer drains holding the write lock, reaching the policy with
    //! `get_mut`. Every token drained was recorded, none is drained twice, and
    //! with room in the ring no read is lost.
    use super::*;
    use crate::sync::{Mutex, RwLock};
    use loom::sync::Arc;
    use loom::thread;

    /// The map lock around the policy, as in `store::Map`.
    type Shard = RwLock<Mutex<Vec<Token>>>;

    fn record_and_maybe_drain(buf: &ReadBuffer, shard: &Shard, token: Token) {
        let map = shard.read();
        let recorded = buf.record(token);
        if matches!(recorded, Recorded::Filled | Recorded::Full) {
            if let Some(mut applied) = map.try_lock() {
                if buf.drain(|t| applied.push(t)) && recorded == Recorded::Full {
                    applied.push(token);
                }
            }
        }
    }

    fn write_and_drain(buf: &ReadBuffer, shard: &Shard) {
        let mut map = shard.write();
        let applied = map.get_mut();
        let _ = buf.drain(|t| applied.push(t));
    }

    fn applied(shard: &Shard) -> Vec<Token> {
        shard.write().get_mut().clone()
    }

    #[test]
    fn two_producers_and_a_drainer() {
        loom::model(|| {
            let buf = Arc::new(ReadBuffer::default());
            let shard: Arc<Shard> = Arc::new(RwLock::new(Mutex::new(Vec::new())));
            let producers: Vec<_> = (0..2)
                .map(|i| {
                    let (buf, shard) = (buf.clone(), shard.clone());
                    thread::spawn(move || record_and_maybe_drain(&buf, &shard, i))
                })
                .collect();
            // A writer drains while producers run.
            write_and_drain(&buf, &shard);
            for p in producers {
                p.join().unwrap();
            }
            write_and_drain(&buf, &shard);
            // Two reads never overflow a ring of two, and a lost claim race is
            // retried, so both reads arrive, once each.
            let mut seen = applied(&shard);
            seen.sort_unstable();
            assert_eq!(seen, vec![0, 1]);
        });
    }

    #[test]
    fn overflow_drops_but_never_duplicates() {
        loom::model(|| {
            let buf = Arc::new(ReadBuffer::default());
            let shard: Arc<Shard> = Arc::new(RwLock::new(Mutex::new(Vec::new())));
            let producers: Vec<_> = (0..2)
                .map(|i| {
                    let (buf, shard) = (buf.clone(), shard.clone());
                    thread::spawn(move || {
                        record_and_maybe_drain(&buf, &shard, 2 * i);
                        record_and_maybe_drain(&buf, &shard, 2 * i + 1);
                    })
                })
                .collect();
            for p in producers {
                p.join().unwrap();
            }
            write_and_drain(&buf, &shard);
            let applied = applied(&shard);
            let mut seen = applied.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), applied.len(), "a token was drained twice");
            assert!(seen.iter().all(|&t| t < 4));
            // Each producer's own reads stay in order.
            for i in 0..2 {
                let mine: Vec<_> = applied.iter().filter(|&&t| t / 2 == i).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]));
            }
        });
    }
}
