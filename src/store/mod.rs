//! The sharded store: each shard is a padded reader-writer lock around a
//! `hashbrown::HashTable` of `u32` tokens into a slab of entries, plus the
//! shard's policy and its read buffer. The store knows nothing of time; it asks
//! the policy for victims and hands removed entries back to the caller, who
//! notifies listeners after the lock is released.

mod read_buffer;
mod slab;

use std::borrow::Borrow;

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::policy::{list::NIL, Eviction, Policy};
use crate::sync::{AtomicU64, RwLock};
use crate::RemovalCause;
use read_buffer::ReadBuffer;
use slab::{Entry, Slab};
pub(crate) use slab::{Token, MAX_WEIGHT};

/// Entries taken out under a shard lock, to be handed to the listener (or
/// dropped) after the lock is released.
pub(crate) type Removed<K, V> = SmallVec<[(K, V, RemovalCause); 2]>;

/// Write-side counters, kept under the shard's write lock (so plain integers).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) inserts: u64,
    pub(crate) updates: u64,
    pub(crate) evictions: u64,
    pub(crate) evicted_weight: u64,
    pub(crate) invalidations: u64,
    pub(crate) rejections: u64,
}

/// One shard: the lock, and read-side counters beside the lock word (a read
/// writes that cache line anyway).
#[derive(Debug)]
pub(crate) struct Shard<K, V> {
    pub(crate) core: RwLock<ShardCore<K, V>>,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
}

impl<K, V> Shard<K, V> {
    pub(crate) fn new(capacity: u64, eviction: Eviction, initial_capacity: usize) -> Self {
        Self {
            core: RwLock::new(ShardCore {
                table: HashTable::with_capacity(initial_capacity),
                slab: Slab::with_capacity(initial_capacity),
                reads: ReadBuffer::default(),
                policy: Policy::new(eviction),
                weight: 0,
                capacity,
                counters: Counters::default(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

/// What the shard lock protects.
#[derive(Debug)]
pub(crate) struct ShardCore<K, V> {
    table: HashTable<Token>,
    slab: Slab<K, V>,
    reads: ReadBuffer,
    policy: Policy,
    weight: u64,
    capacity: u64,
    pub(crate) counters: Counters,
}

impl<K: Eq, V> ShardCore<K, V> {
    pub(crate) fn find<Q>(&self, hash: u64, key: &Q) -> Option<Token>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.table
            .find(hash, |&t| self.slab.get(t).key.borrow() == key)
            .copied()
    }

    pub(crate) fn value(&self, token: Token) -> &V {
        &self.slab.get(token).value
    }

    /// Notes a read for the policy; true when the read buffer wants a drain.
    pub(crate) fn record_read(&self, token: Token) -> bool {
        self.reads.record(token)
    }

    pub(crate) fn records_reads(&self) -> bool {
        self.policy.records_reads()
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// Applies buffered reads to the policy. Every write calls this first, so the
    /// buffer only ever names resident tokens.
    pub(crate) fn drain_reads(&mut self) {
        let Self {
            reads,
            policy,
            slab,
            ..
        } = self;
        reads.drain(|t| {
            debug_assert!(slab.is_resident(t));
            policy.on_access(t);
        });
    }

    /// Inserts or replaces `key`. Entries the shard let go of are pushed to `out`.
    /// Gives the key and value back when the weight can never fit in this shard
    /// (any entry already under `key` is removed: a rejected write must not leave
    /// the value it meant to replace readable).
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        hash_of: &impl Fn(&K) -> u64,
        out: &mut Removed<K, V>,
    ) -> Result<(), (K, V)> {
        self.drain_reads();
        let existing = self.find(hash, &key);
        if u64::from(weight) > self.capacity || weight > MAX_WEIGHT {
            if let Some(t) = existing {
                let old = self.unlink(hash, t);
                out.push((key, old.value, RemovalCause::Replaced));
                let old_key = old.key;
                self.counters.rejections += 1;
                return Err((old_key, value));
            }
            self.counters.rejections += 1;
            return Err((key, value));
        }
        match existing {
            Some(t) => {
                let entry = self.slab.get_mut(t);
                let old_weight = entry.weight();
                let old_value = std::mem::replace(&mut entry.value, value);
                entry.set_weight(weight);
                self.weight = self.weight - u64::from(old_weight) + u64::from(weight);
                self.policy.on_access(t);
                self.counters.updates += 1;
                out.push((key, old_value, RemovalCause::Replaced));
                self.evict_to(self.capacity, t, hash_of, out);
            }
            None => {
                self.evict_to(self.capacity - u64::from(weight), NIL, hash_of, out);
                let Some(t) = self.slab.insert(Entry::new(key, value, weight)) else {
                    unreachable!("a shard never holds u32::MAX entries: its capacity is checked");
                };
                let slab = &self.slab;
                self.table
                    .insert_unique(hash, t, |&t| hash_of(&slab.get(t).key));
                self.policy.on_insert(t);
                self.weight += u64::from(weight);
                self.counters.inserts += 1;
            }
        }
        Ok(())
    }

    pub(crate) fn remove<Q>(&mut self, hash: u64, key: &Q) -> Option<(K, V)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.drain_reads();
        let t = self.find(hash, key)?;
        let entry = self.unlink(hash, t);
        self.counters.invalidations += 1;
        Some((entry.key, entry.value))
    }

    /// Empties the shard, releasing its memory.
    pub(crate) fn clear(&mut self, out: &mut Vec<(K, V)>) {
        self.reads.clear();
        self.table = HashTable::new();
        self.policy.clear();
        self.weight = 0;
        let before = out.len();
        out.extend(self.slab.take_all().map(|e| (e.key, e.value)));
        self.counters.invalidations += (out.len() - before) as u64;
    }

    /// Clones up to `max` entries from slot `from` on into `out`; returns the slot
    /// to continue from, or `None` when the shard is exhausted.
    pub(crate) fn collect(&self, from: usize, max: usize, out: &mut Vec<(K, V)>) -> Option<usize>
    where
        K: Clone,
        V: Clone,
    {
        for (taken, (t, e)) in self.slab.iter_from(from).enumerate() {
            if taken == max {
                return Some(t as usize);
            }
            out.push((e.key.clone(), e.value.clone()));
        }
        None
    }

    /// Evicts in policy order, never `keep`, until the shard weighs at most `limit`.
    fn evict_to(
        &mut self,
        limit: u64,
        keep: Token,
        hash_of: &impl Fn(&K) -> u64,
        out: &mut Removed<K, V>,
    ) {
        while self.weight > limit {
            let Some(victim) = self.policy.victim(keep) else {
                break;
            };
            let hash = hash_of(&self.slab.get(victim).key);
            let entry = self.unlink(hash, victim);
            self.counters.evictions += 1;
            self.counters.evicted_weight += u64::from(entry.weight());
            out.push((entry.key, entry.value, RemovalCause::Size));
        }
    }

    /// Takes a resident entry out of the table, the policy and the slab.
    fn unlink(&mut self, hash: u64, token: Token) -> Entry<K, V> {
        match self.table.find_entry(hash, |&t| t == token) {
            Ok(found) => {
                found.remove();
            }
            Err(_) => unreachable!("resident token {token} missing from the table"),
        }
        self.policy.on_remove(token);
        let entry = self.slab.remove(token);
        self.weight -= u64::from(entry.weight());
        entry
    }

    /// Resident tokens in eviction order.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn eviction_order(&self) -> Vec<&K> {
        self.policy
            .order()
            .into_iter()
            .map(|t| &self.slab.get(t).key)
            .collect()
    }

    /// Checks every structural invariant of the shard; panics on the first broken one.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn validate(&self, hash_of: &impl Fn(&K) -> u64) {
        let mut weight = 0;
        let mut live = Vec::new();
        for (t, e) in self.slab.iter_from(0) {
            weight += u64::from(e.weight());
            live.push(t);
            let found = self.table.find(hash_of(&e.key), |&x| x == t);
            assert_eq!(found, Some(&t), "resident entry missing from the table");
        }
        assert_eq!(self.table.len(), live.len(), "table and slab disagree");
        assert_eq!(weight, self.weight, "weight total drifted");
        assert!(self.weight <= self.capacity, "shard over capacity");
        let mut order = self.policy.order();
        order.sort_unstable();
        assert_eq!(order, live, "policy and slab disagree on residents");
    }
}
