//! Least-frequently-used eviction in O(1): entries sit in per-frequency buckets
//! (Shah, Mitra & Matani, "An O(1) algorithm for implementing the LFU cache
//! eviction scheme", 2010). Buckets are kept in ascending frequency order; each
//! bucket is an intrusive list in order of arrival, so ties are broken by recency
//! (the least recently used of the least frequently used goes first).

use super::list::{List, NIL};
use super::Entries;
use crate::store::Token;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    freq: u32,
    entries: List,
    prev: u32,
    next: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Lfu {
    /// The buckets' links live in the entries' slots.
    /// The bucket each resident token is in.
    bucket_of: Vec<u32>,
    buckets: Vec<Bucket>,
    free_buckets: Vec<u32>,
    /// The bucket with the lowest frequency, or `NIL`.
    lowest: u32,
}

impl Lfu {
    pub(crate) fn new() -> Self {
        Self {
            lowest: NIL,
            ..Self::default()
        }
    }

    pub(crate) fn on_insert(&mut self, token: Token, entries: &impl Entries) {
        let bucket = if self.lowest != NIL && self.buckets[self.lowest as usize].freq == 1 {
            self.lowest
        } else {
            self.new_bucket(1, NIL, self.lowest)
        };
        self.place(token, bucket, entries);
    }

    pub(crate) fn on_access(&mut self, token: Token, entries: &impl Entries) {
        let from = match self.bucket_of.get(token as usize) {
            Some(&b) if b != NIL => b,
            _ => return, // a stale read of an entry that has left
        };
        let Bucket { freq, next, .. } = self.buckets[from as usize];
        let Some(freq) = freq.checked_add(1) else {
            // Saturated: only recency can still change.
            let b = &mut self.buckets[from as usize];
            b.entries.move_to_back(&mut { entries }, token);
            return;
        };
        let to = if next != NIL && self.buckets[next as usize].freq == freq {
            next
        } else {
            self.new_bucket(freq, from, next)
        };
        self.take(token, entries);
        self.place(token, to, entries);
    }

    /// Forgets `token`, if it is in a bucket (an entry of weight 0 never
    /// is: the store keeps it out of the policy).
    pub(crate) fn on_remove(&mut self, token: Token, entries: &impl Entries) {
        if self
            .bucket_of
            .get(token as usize)
            .is_some_and(|&b| b != NIL)
        {
            self.take(token, entries);
        }
    }

    pub(crate) fn victim(&self, keep: Token, entries: &impl Entries) -> Option<Token> {
        let mut bucket = self.lowest;
        while bucket != NIL {
            let b = &self.buckets[bucket as usize];
            if let Some(head) = b.entries.head() {
                if head != keep {
                    return Some(head);
                }
                let (_, next) = entries.link(head);
                if next != NIL {
                    return Some(next);
                }
            }
            bucket = b.next;
        }
        None
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }

    fn place(&mut self, token: Token, bucket: u32, entries: &impl Entries) {
        if self.bucket_of.len() <= token as usize {
            self.bucket_of.resize(token as usize + 1, NIL);
        }
        self.bucket_of[token as usize] = bucket;
        self.buckets[bucket as usize]
            .entries
            .push_back(&mut { entries }, token);
    }

    /// Unlinks `token` from its bucket, freeing the bucket if it empties.
    fn take(&mut self, token: Token, entries: &impl Entries) {
        let bucket = self.bucket_of[token as usize];
        let b = &mut self.buckets[bucket as usize];
        b.entries.unlink(&mut { entries }, token);
        self.bucket_of[token as usize] = NIL;
        if b.entries.is_empty() {
            let Bucket { prev, next, .. } = *b;
            if prev == NIL {
                self.lowest = next;
            } else {
                self.buckets[prev as usize].next = next;
            }
            if next != NIL {
                self.buckets[next as usize].prev = prev;
            }
            self.free_buckets.push(bucket);
        }
    }

    /// A new empty bucket linked between `prev` and `next`.
    fn new_bucket(&mut self, freq: u32, prev: u32, next: u32) -> u32 {
        let bucket = Bucket {
            freq,
            entries: List::default(),
            prev,
            next,
        };
        let index = match self.free_buckets.pop() {
            Some(i) => {
                self.buckets[i as usize] = bucket;
                i
            }
            None => {
                self.buckets.push(bucket);
                (self.buckets.len() - 1) as u32
            }
        };
        if prev == NIL {
            self.lowest = index;
        } else {
            self.buckets[prev as usize].next = index;
        }
        if next != NIL {
            self.buckets[next as usize].prev = index;
        }
        index
    }

    /// Resident tokens in eviction order: ascending frequency, then least recent first.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn order(&self, entries: &impl Entries) -> Vec<Token> {
        let mut out = Vec::new();
        let mut bucket = self.lowest;
        let mut last_freq = 0;
        while bucket != NIL {
            let b = &self.buckets[bucket as usize];
            assert!(b.freq > last_freq, "buckets out of frequency order");
            assert!(!b.entries.is_empty(), "empty bucket left linked");
            last_freq = b.freq;
            for t in b.entries.tokens(&entries) {
                assert_eq!(self.bucket_of[t as usize], bucket, "token in wrong bucket");
                out.push(t);
            }
            bucket = b.next;
        }
        out
    }

    /// The frequency count of a resident token.
    #[cfg(test)]
    pub(crate) fn frequency(&self, token: Token) -> u32 {
        self.buckets[self.bucket_of[token as usize] as usize].freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{slot_state_in, TestSlots};

    /// Entries whose slots keep links; none has a hash, weight or reads.
    struct Stale(TestSlots);

    impl Entries for Stale {
        fn hash(&self, _: Token) -> u64 {
            0
        }
        fn weight(&self, _: Token) -> u32 {
            1
        }
        fn take_hits(&self, _: Token) -> u8 {
            0
        }
        fn touch(&self, _: Token) {}
        slot_state_in!(0);
    }

    #[test]
    fn evicts_least_frequent_then_least_recent() {
        let mut lfu = Lfu::new();
        let e = &Stale(TestSlots::default());
        for t in 0..4 {
            lfu.on_insert(t, e);
        }
        lfu.on_access(0, e);
        lfu.on_access(0, e);
        lfu.on_access(2, e);
        // freq: 0→3, 1→1, 2→2, 3→1; ties (1, 3) by recency.
        assert_eq!(lfu.order(e), vec![1, 3, 2, 0]);
        assert_eq!(lfu.victim(NIL, e), Some(1));
        assert_eq!(lfu.victim(1, e), Some(3));
        assert_eq!(lfu.frequency(0), 3);
        lfu.on_remove(1, e);
        lfu.on_remove(3, e);
        assert_eq!(lfu.victim(NIL, e), Some(2));
        assert_eq!(lfu.victim(2, e), Some(0));
        lfu.on_remove(2, e);
        assert_eq!(lfu.victim(0, e), None);
        assert_eq!(lfu.order(e), vec![0]);
        lfu.on_access(1, e); // stale: ignored
        lfu.on_access(77, e);
        assert_eq!(lfu.order(e), vec![0]);
    }
}
