//! The sharded store. A shard is a lock and a ring:
//!
//! * the **map** — a `hashbrown::HashTable` of `u32` tokens into a slab of
//!   entries, and the policy — behind a reader-writer lock: lookups share it,
//!   writes own it;
//! * the policy sits behind a mutex of its own inside the map, so that readers
//!   can apply buffered reads to it without blocking each other's lookups;
//!   writers reach it through the write lock (`Mutex::get_mut`, no atomics);
//! * the **read buffer**, a lock-free ring that lookups append tokens to, for
//!   the policies that apply every read in order (LRU, LFU). W-TinyLFU instead
//!   collects reads from the entries themselves (`Entry::note_read`).
//!
//! Writers take the map lock, drain the ring, and change the map and the policy
//! together; readers never wait on the policy (they `try_lock` it to drain a
//! full ring). The store knows nothing of time: it asks the policy for victims
//! and hands removed entries back to the caller, who notifies listeners after
//! the lock is released.

mod read_buffer;
mod slab;

use std::borrow::Borrow;

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::policy::{Entries, Eviction, Policy};
use crate::sync::{AtomicU64, Mutex, Ordering, ReadGuard, RwLock, WriteGuard};
use crate::RemovalCause;
use read_buffer::ReadBuffer;
use slab::Slab;
pub(crate) use slab::{Entry, Token, MAX_WEIGHT};

/// Entries taken out under a shard lock, to be handed to the listener (or
/// dropped) after the lock is released.
pub(crate) type Removed<K, V> = SmallVec<[(K, V, RemovalCause); 2]>;

/// Write-side counters, kept under the map's write lock (so plain integers).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) inserts: u64,
    pub(crate) updates: u64,
    pub(crate) evictions: u64,
    pub(crate) evicted_weight: u64,
    pub(crate) invalidations: u64,
    pub(crate) rejections: u64,
}

/// One shard. `repr(C)` keeps the map's lock word and its read counter at the
/// front, in the one cache line every lookup already writes.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Shard<K, V> {
    map: RwLock<Map<K, V>>,
    reads: ReadBuffer,
    /// Whether the policy collects reads from the entries themselves
    /// (`Entry::note_read`) instead of through the ring.
    deferred_reads: bool,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
}

/// What the map lock protects.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Map<K, V> {
    table: HashTable<Token>,
    /// Hits since the last write, for a policy that collects reads from the
    /// entries (its hill climber needs the hit rate). Bumped by readers with a
    /// plain load and store: it shares a cache line with the lock word that
    /// the read lock has just written, so it costs no extra miss, and an
    /// increment lost to a racing reader only blurs a rate.
    hits: AtomicU64,
    /// The policy. Writers own it through the write lock (`Mutex::get_mut`, no
    /// atomics); readers draining the ring under the read lock `try_lock` it.
    policy: Mutex<Policy>,
    slab: Slab<K, V>,
    weight: u64,
    capacity: u64,
    pub(crate) counters: Counters,
}

impl<K, V> Shard<K, V> {
    pub(crate) fn new(capacity: u64, eviction: Eviction, initial_capacity: usize) -> Self {
        Self {
            map: RwLock::new(Map {
                table: HashTable::with_capacity(initial_capacity),
                hits: AtomicU64::new(0),
                policy: Mutex::new(Policy::new(eviction, capacity)),
                slab: Slab::with_capacity(initial_capacity),
                weight: 0,
                capacity,
                counters: Counters::default(),
            }),
            reads: ReadBuffer::default(),
            deferred_reads: eviction == Eviction::TinyLfu,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The map, shared with other readers.
    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, Map<K, V>> {
        self.map.read()
    }

    /// The map for writing, with buffered reads applied to the policy.
    pub(crate) fn write<'a, H: Fn(&K) -> u64>(
        &'a self,
        hash_of: &'a H,
    ) -> ShardWriter<'a, K, V, H> {
        let mut guard = self.map.write();
        let map = &mut *guard;
        let policy = map.policy.get_mut();
        // No reader can race these two: the write lock is held.
        let hits = map.hits.load(Ordering::Relaxed);
        if hits != 0 {
            map.hits.store(0, Ordering::Relaxed);
            policy.on_hits(hits);
        }
        if !self.deferred_reads {
            let view = View {
                slab: &map.slab,
                hash_of,
            };
            self.reads.drain(|t| policy.on_access(t, &view));
        }
        ShardWriter {
            map: guard,
            hash_of,
        }
    }

    /// Records a read of `entry` (at `token`) for the policy, with the map still
    /// read-locked by the caller. When the ring fills, this drains it if the
    /// policy lock is free; it never waits.
    #[inline]
    pub(crate) fn record_read(
        &self,
        map: &Map<K, V>,
        token: Token,
        entry: &Entry<K, V>,
        hash_of: &impl Fn(&K) -> u64,
    ) {
        if self.deferred_reads {
            let hits = map.hits.load(Ordering::Relaxed);
            map.hits.store(hits.wrapping_add(1), Ordering::Relaxed);
            entry.note_read();
            return;
        }
        if self.reads.record(token) {
            self.drain_reads(map, hash_of);
        }
    }

    #[cold]
    fn drain_reads(&self, map: &Map<K, V>, hash_of: &impl Fn(&K) -> u64) {
        if let Some(mut policy) = map.policy.try_lock() {
            let view = View {
                slab: &map.slab,
                hash_of,
            };
            self.reads.drain(|t| policy.on_access(t, &view));
        }
    }
}

/// The policy's window onto the slab: hashes, weights and read filters by token.
struct View<'a, K, V, H> {
    slab: &'a Slab<K, V>,
    hash_of: &'a H,
}

impl<K, V, H: Fn(&K) -> u64> Entries for View<'_, K, V, H> {
    fn hash(&self, token: Token) -> u64 {
        (self.hash_of)(&self.slab.get(token).key)
    }

    fn weight(&self, token: Token) -> u32 {
        self.slab.get(token).weight()
    }

    fn take_hits(&self, token: Token) -> u8 {
        self.slab.get(token).take_hits()
    }

    fn touch(&self, token: Token) {
        self.slab.get(token).note_read();
    }
}

impl<K: Eq, V> Map<K, V> {
    /// Finds `key`'s entry in one probe of the table.
    #[inline]
    pub(crate) fn find<Q>(&self, hash: u64, key: &Q) -> Option<(Token, &Entry<K, V>)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut found = None;
        let token = self.table.find(hash, |&t| {
            let entry = self.slab.get(t);
            let hit = entry.key.borrow() == key;
            if hit {
                found = Some(entry);
            }
            hit
        })?;
        Some((*token, found?))
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
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
}

/// A shard held for writing: the map and the policy, changed together.
pub(crate) struct ShardWriter<'a, K, V, H> {
    map: WriteGuard<'a, Map<K, V>>,
    hash_of: &'a H,
}

impl<K: Eq, V, H: Fn(&K) -> u64> ShardWriter<'_, K, V, H> {
    /// Runs `f` on the policy with a view of the slab.
    fn with_policy<R>(&mut self, f: impl FnOnce(&mut Policy, &View<'_, K, V, H>) -> R) -> R {
        let map = &mut *self.map;
        let view = View {
            slab: &map.slab,
            hash_of: self.hash_of,
        };
        f(map.policy.get_mut(), &view)
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
        out: &mut Removed<K, V>,
    ) -> Result<(), (K, V)> {
        let existing = self.map.find(hash, &key).map(|(t, _)| t);
        if u64::from(weight) > self.map.capacity || weight > MAX_WEIGHT {
            self.map.counters.rejections += 1;
            if let Some(t) = existing {
                let old = self.unlink(hash, t);
                out.push((key, old.value, RemovalCause::Replaced));
                return Err((old.key, value));
            }
            return Err((key, value));
        }
        let token = match existing {
            Some(t) => {
                let map = &mut *self.map;
                let entry = map.slab.get_mut(t);
                let old_weight = entry.weight();
                let old_value = std::mem::replace(&mut entry.value, value);
                entry.set_weight(weight);
                map.weight = map.weight - u64::from(old_weight) + u64::from(weight);
                map.counters.updates += 1;
                out.push((key, old_value, RemovalCause::Replaced));
                if old_weight != weight {
                    map.policy.get_mut().on_reweigh(t, old_weight, weight);
                }
                self.with_policy(|p, view| p.on_access(t, view));
                t
            }
            None => {
                let map = &mut *self.map;
                let Some(t) = map.slab.insert(Entry::new(key, value, weight)) else {
                    unreachable!("a shard never holds u32::MAX entries: its capacity is checked");
                };
                let (slab, hash_of) = (&map.slab, self.hash_of);
                map.table
                    .insert_unique(hash, t, |&t| hash_of(&slab.get(t).key));
                map.weight += u64::from(weight);
                map.counters.inserts += 1;
                self.with_policy(|p, view| p.on_insert(t, view));
                t
            }
        };
        // The entry just written is never its own victim: it stays readable at
        // least until the next write to this shard.
        self.evict_to(self.map.capacity, token, out);
        Ok(())
    }

    pub(crate) fn remove<Q>(&mut self, hash: u64, key: &Q) -> Option<(K, V)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let (t, _) = self.map.find(hash, key)?;
        let entry = self.unlink(hash, t);
        self.map.counters.invalidations += 1;
        Some((entry.key, entry.value))
    }

    /// Empties the shard, releasing its memory.
    pub(crate) fn clear(&mut self, out: &mut Vec<(K, V)>) {
        let map = &mut *self.map;
        map.table = HashTable::new();
        map.weight = 0;
        map.policy.get_mut().clear();
        let before = out.len();
        out.extend(map.slab.take_all().map(|e| (e.key, e.value)));
        map.counters.invalidations += (out.len() - before) as u64;
    }

    /// Evicts in policy order, never `keep`, until the shard weighs at most `limit`.
    fn evict_to(&mut self, limit: u64, keep: Token, out: &mut Removed<K, V>) {
        while self.map.weight > limit {
            let Some(victim) = self.with_policy(|p, view| p.victim(keep, view)) else {
                break;
            };
            let hash = (self.hash_of)(&self.map.slab.get(victim).key);
            let entry = self.unlink(hash, victim);
            self.map.counters.evictions += 1;
            self.map.counters.evicted_weight += u64::from(entry.weight());
            out.push((entry.key, entry.value, RemovalCause::Size));
        }
    }

    /// Takes a resident entry out of the table, the policy and the slab.
    fn unlink(&mut self, hash: u64, token: Token) -> Entry<K, V> {
        match self.map.table.find_entry(hash, |&t| t == token) {
            Ok(found) => {
                found.remove();
            }
            Err(_) => unreachable!("resident token {token} missing from the table"),
        }
        self.with_policy(|p, view| p.on_remove(token, view));
        let map = &mut *self.map;
        let entry = map.slab.remove(token);
        map.weight -= u64::from(entry.weight());
        entry
    }

    /// Resident keys in eviction order.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn eviction_order(&self) -> Vec<&K> {
        self.map
            .policy
            .try_lock()
            .expect("the write lock excludes drains")
            .order()
            .into_iter()
            .map(|t| &self.map.slab.get(t).key)
            .collect()
    }

    /// Checks every structural invariant of the shard; panics on the first broken one.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn validate(&self) {
        let map = &*self.map;
        let hash_of = self.hash_of;
        let mut weight = 0;
        let mut live = Vec::new();
        for (t, e) in map.slab.iter_from(0) {
            weight += u64::from(e.weight());
            live.push(t);
            let found = map.table.find(hash_of(&e.key), |&x| x == t);
            assert_eq!(found, Some(&t), "resident entry missing from the table");
        }
        assert_eq!(map.table.len(), live.len(), "table and slab disagree");
        assert_eq!(weight, map.weight, "weight total drifted");
        assert!(map.weight <= map.capacity, "shard over capacity");
        let policy = map
            .policy
            .try_lock()
            .expect("the write lock excludes drains");
        let mut order = policy.order();
        order.sort_unstable();
        assert_eq!(order, live, "policy and slab disagree on residents");
        policy.validate(&View {
            slab: &map.slab,
            hash_of,
        });
    }
}
