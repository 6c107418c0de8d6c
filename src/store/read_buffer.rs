//! A lossy per-shard buffer of read tokens.
//!
//! Readers hold the shard's *read* lock and append the token they hit; whoever
//! holds the *write* lock applies the buffered tokens to the policy. Because every
//! writer drains before it changes anything, every buffered token names an entry
//! that is still resident when it is drained: the type system enforces the split,
//! since `record` needs `&self` (a read guard) and `drain` needs `&mut self` (a
//! write guard). When the buffer is full a reader tries — never waits — to take the
//! write lock and drain; if that fails the read is dropped, which only happens
//! under contention and only costs the policy a little precision.

use crate::store::Token;
use crate::sync::{AtomicU32, Ordering};

/// Reads buffered per shard before a drain.
#[cfg(not(larder_loom))]
pub(crate) const READ_BUFFER_LEN: usize = 64;
/// Small under loom so the models reach the full-buffer path.
#[cfg(larder_loom)]
pub(crate) const READ_BUFFER_LEN: usize = 2;

#[derive(Debug)]
pub(crate) struct ReadBuffer {
    /// Slots claimed so far; may run past `READ_BUFFER_LEN` while a drain is pending.
    len: AtomicU32,
    slots: [AtomicU32; READ_BUFFER_LEN],
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self {
            len: AtomicU32::new(0),
            slots: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl ReadBuffer {
    /// Records a read of `token`. Returns true when the buffer is full and should
    /// be drained (the caller then releases its read lock and `try_write`s).
    pub(crate) fn record(&self, token: Token) -> bool {
        // Load first so a full buffer costs a shared read, not a contended RMW.
        let len = self.len.load(Ordering::Relaxed) as usize;
        if len >= READ_BUFFER_LEN {
            return true;
        }
        let slot = self.len.fetch_add(1, Ordering::Relaxed) as usize;
        if slot < READ_BUFFER_LEN {
            // The write lock's acquire makes this store visible to the drainer.
            self.slots[slot].store(token, Ordering::Relaxed);
        }
        slot + 1 >= READ_BUFFER_LEN
    }

    /// Applies and forgets every buffered read, oldest first.
    pub(crate) fn drain(&mut self, mut apply: impl FnMut(Token)) {
        let len = (self.len.load(Ordering::Relaxed) as usize).min(READ_BUFFER_LEN);
        for slot in &self.slots[..len] {
            apply(slot.load(Ordering::Relaxed));
        }
        self.len.store(0, Ordering::Relaxed);
    }

    /// Forgets buffered reads without applying them (the entries are gone).
    pub(crate) fn clear(&mut self) {
        self.len.store(0, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_reports_full() {
        let mut buf = ReadBuffer::default();
        for t in 0..READ_BUFFER_LEN as Token - 1 {
            assert!(!buf.record(t));
        }
        assert!(buf.record(999));
        assert!(buf.record(1000), "a full buffer keeps asking for a drain");
        let mut seen = Vec::new();
        buf.drain(|t| seen.push(t));
        assert_eq!(seen.len(), READ_BUFFER_LEN);
        assert_eq!(seen[0], 0);
        assert_eq!(*seen.last().unwrap(), 999);
        buf.drain(|_| panic!("drained twice"));
    }
}

#[cfg(all(test, larder_loom))]
mod loom_models {
    //! The read-buffer / lock protocol under loom: readers record under the read
    //! lock, a full buffer is drained by whoever wins `try_write`, writers drain
    //! before they mutate. No recorded token may be applied twice or name a slot
    //! that a writer freed, and with room in the buffer no read is lost.
    use super::*;
    use crate::sync::RwLock;
    use loom::sync::Arc;
    use loom::thread;

    struct Core {
        reads: ReadBuffer,
        resident: [bool; 4],
        applied: Vec<Token>,
    }

    fn read(lock: &RwLock<Core>, token: Token) -> bool {
        let full = {
            let core = lock.read();
            if !core.resident[token as usize] {
                return false;
            }
            core.reads.record(token)
        };
        if full {
            if let Some(mut core) = lock.try_write() {
                let Core {
                    reads,
                    resident,
                    applied,
                } = &mut *core;
                reads.drain(|t| {
                    assert!(resident[t as usize], "drained a token that was freed");
                    applied.push(t);
                });
            }
        }
        true
    }

    #[test]
    fn readers_and_a_writer() {
        loom::model(|| {
            let lock = Arc::new(RwLock::new(Core {
                reads: ReadBuffer::default(),
                resident: [true; 4],
                applied: Vec::new(),
            }));
            let readers: Vec<_> = (0..2)
                .map(|i| {
                    let lock = lock.clone();
                    thread::spawn(move || read(&lock, i) as usize)
                })
                .collect();
            {
                // A writer: drain first, then free token 1.
                let mut core = lock.write();
                let Core {
                    reads,
                    resident,
                    applied,
                } = &mut *core;
                reads.drain(|t| {
                    assert!(resident[t as usize]);
                    applied.push(t);
                });
                resident[1] = false;
            }
            let hits: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
            let mut core = lock.write();
            let Core { reads, applied, .. } = &mut *core;
            reads.drain(|t| applied.push(t));
            // The buffer never filled, so every hit was applied exactly once.
            assert_eq!(applied.len(), hits);
            let mut sorted = applied.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), applied.len());
        });
    }
}
