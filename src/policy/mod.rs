//! Eviction policies. A policy sees only slab tokens: it is told when a token
//! becomes resident, is read, changes weight, or leaves, and it names the next
//! victim. What it needs to know about an entry — its hash for the frequency
//! sketch, its weight — it asks through [`Entries`]; it never sees keys, values
//! or locks.

mod climber;
mod ghosts;
mod lfu;
pub(crate) mod list;
mod lru;
mod sketch;
pub(crate) use sketch::Lines as SketchLines;
mod tinylfu;
#[cfg(test)]
mod tinylfu_model;

use crate::store::Token;

/// What a policy may ask about the entries it orders.
pub(crate) trait Entries {
    /// The key's hash.
    fn hash(&self, token: Token) -> u64;
    /// The entry's weight.
    fn weight(&self, token: Token) -> u32;
    /// Reads of the entry noted since the last call (capped), resetting the count.
    fn take_hits(&self, token: Token) -> u8;
    /// Notes a read of the entry, to be collected by `take_hits`.
    fn touch(&self, token: Token);
    /// The entry's `(prev, next)` list links, kept in its slot (see
    /// [`list::LinkStore`]).
    fn link(&self, token: Token) -> (Token, Token);
    fn set_link(&self, token: Token, prev: Token, next: Token);
    fn set_prev(&self, token: Token, prev: Token);
    fn set_next(&self, token: Token, next: Token);
    /// Whether `token`'s slot holds an entry that is on a list (a buffered
    /// read may name a slot whose entry has left).
    fn is_linked(&self, token: Token) -> bool;
    /// The policy's byte of state kept in the entry's slot; 0 for a vacant slot.
    fn meta(&self, token: Token) -> u8;
    fn set_meta(&self, token: Token, meta: u8);
    /// Replaces every resident's byte of state by `f` of it.
    fn update_metas(&self, f: impl FnMut(u8) -> u8);
    /// Starts fetching the entry's slot (a hint: see [`crate::prefetch`]).
    fn prefetch(&self, _token: Token) {}
}

/// Which entries make way when the cache is full.
///
/// ```
/// use larder::{Cache, Eviction};
///
/// let cache: Cache<u32, u32> = Cache::builder()
///     .max_capacity(1_000)
///     .eviction(Eviction::Lfu)
///     .build()
///     .unwrap();
/// cache.insert(1, 1);
/// assert_eq!(cache.get(&1), Some(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Eviction {
    /// Window TinyLFU with an adaptive window (the default): new entries pass a
    /// small LRU window, then must beat the main region's victim on estimated
    /// frequency to stay, unless they were turned away a short while ago too
    /// (their ghost admits them). Resists scans, adapts
    /// between recency- and frequency-biased workloads, and its reads mostly
    /// write nothing.
    #[default]
    TinyLfu,
    /// Least recently used: every read moves the entry to the back of its shard's
    /// list; the front is evicted. Exact per shard on one thread; reads racing
    /// for one shard may drop a read now and then (see the crate docs).
    Lru,
    /// Least frequently used: the entry used the fewest times goes first (a
    /// read or an update of its value counts as a use), ties broken by
    /// recency. Counts never age, so LFU suits stable popularity.
    Lfu,
}

/// The per-shard policy state, chosen at build time.
///
/// W-TinyLFU's state sits in the shard itself, not behind a box: every write
/// reads several of its lines, and in the shard they follow the map's fields
/// at known offsets instead of behind a pointer to load first, in an
/// allocation that need not start on a line. On the throughput benchmark's mix
/// that took L1 misses from 4.37 to 3.79 per operation and L2 misses (512 KiB)
/// from 1.56 to 1.48 (`benches/mix_cost.sh` with the machine's L2 size); two
/// builds alternating against quick_cache, the median ratio went from 0.82 to
/// 0.84 on one thread (ten runs each) and from 1.06 to 1.14 on two (three).
/// The other policies' states are smaller; the shard grows by about 170 bytes.
#[derive(Debug)]
#[repr(u8)]
pub(crate) enum Policy {
    Lru(lru::Lru),
    Lfu(lfu::Lfu),
    TinyLfu(tinylfu::TinyLfu),
}

impl Policy {
    pub(crate) fn new(eviction: Eviction, capacity: u64) -> Self {
        match eviction {
            Eviction::Lru => Self::Lru(lru::Lru::default()),
            Eviction::Lfu => Self::Lfu(lfu::Lfu::new()),
            Eviction::TinyLfu => Self::TinyLfu(tinylfu::TinyLfu::new(capacity)),
        }
    }

    /// `token` becomes resident; `hash` is its key's hash.
    #[inline]
    pub(crate) fn on_insert(&mut self, token: Token, hash: u64, entries: &impl Entries) {
        match self {
            Self::Lru(p) => p.on_insert(token, entries),
            Self::Lfu(p) => p.on_insert(token, entries),
            Self::TinyLfu(p) => p.on_insert(token, hash, entries),
        }
    }

    /// Takes back a resident entry whose weight rose from 0 (the store
    /// keeps entries of weight 0 out of the policy): as a new entry that is
    /// read at once under LRU and LFU, as an update is; under W-TinyLfu
    /// without counting a sighting, a miss or a read (see
    /// `TinyLfu::on_rejoin`).
    pub(crate) fn on_rejoin(&mut self, token: Token, hash: u64, entries: &impl Entries) {
        match self {
            Self::Lru(p) => {
                p.on_insert(token, entries);
                p.on_access(token, entries);
            }
            Self::Lfu(p) => {
                p.on_insert(token, entries);
                p.on_access(token, entries);
            }
            Self::TinyLfu(p) => p.on_rejoin(token, hash, entries),
        }
    }

    /// Counts the entry inserted last in W-TinyLFU's sketch: called once the
    /// insert's evictions are done (see `TinyLfu::count_fresh`). True when
    /// the sketch has been allocated anew since the last call (the store
    /// keeps where its lines lie).
    #[inline]
    pub(crate) fn count_fresh(&mut self, entries: &impl Entries) -> bool {
        if let Self::TinyLfu(p) = self {
            p.count_fresh(entries);
            return std::mem::take(&mut p.lines_moved);
        }
        false
    }

    /// A read of `token`; ignored when the policy does not hold it (a stale
    /// buffered read of an entry that has since left).
    pub(crate) fn on_access(&mut self, token: Token, entries: &impl Entries) {
        match self {
            Self::Lru(p) => p.on_access(token, entries),
            Self::Lfu(p) => p.on_access(token, entries),
            Self::TinyLfu(p) => p.on_access(token, entries),
        }
    }

    /// A key not resident is about to be inserted under `hash`: starts
    /// fetching the lines its insert and the eviction after it will read.
    /// Returns the hash of the entry that eviction will most likely take,
    /// if the policy knows it.
    #[inline]
    pub(crate) fn prefetch_insert(&mut self, hash: u64, entries: &impl Entries) -> Option<u64> {
        match self {
            Self::TinyLfu(p) => p.prefetch_insert(hash, entries),
            _ => None,
        }
    }

    /// The hash of a resident token's key, if the policy computed it
    /// already (see `TinyLfu::prefetch_insert`).
    #[inline]
    pub(crate) fn known_hash(&self, token: Token) -> Option<u64> {
        match self {
            Self::TinyLfu(p) => p.known_hash(token),
            _ => None,
        }
    }

    /// Where the policy's frequency sketch lies, if it keeps one yet.
    pub(crate) fn sketch_lines(&self) -> SketchLines {
        match self {
            Self::TinyLfu(p) => p.sketch_lines(),
            _ => SketchLines::default(),
        }
    }

    /// `hits` lookups found their entry since the last write (counted only for
    /// a policy that collects reads from the entries).
    pub(crate) fn on_hits(&mut self, hits: u64) {
        if let Self::TinyLfu(p) = self {
            p.on_hits(hits);
        }
    }

    /// The entry's weight changed from `old` to `new` (the slab already holds `new`).
    pub(crate) fn on_reweigh(&mut self, token: Token, old: u32, new: u32, entries: &impl Entries) {
        if let Self::TinyLfu(p) = self {
            p.on_reweigh(token, old, new, entries);
        }
    }

    /// `token`, of key hash `hash`, leaves; the slab still holds its entry.
    /// The hash comes from the caller, which has just used it to take the
    /// token out of the table, so that a removal runs no user code: a key's
    /// `Hash` panicking halfway through would leave the entry half removed.
    /// Inlined: out of line, each eviction's removal paid the call (about
    /// 2 instructions per operation of the throughput mix under callgrind).
    #[inline(always)]
    pub(crate) fn on_remove(&mut self, token: Token, hash: u64, entries: &impl Entries) {
        match self {
            Self::Lru(p) => p.on_remove(token, entries),
            Self::Lfu(p) => p.on_remove(token, entries),
            Self::TinyLfu(p) => p.on_remove(token, hash, entries),
        }
    }

    /// The next entry to evict, not `keep` (pass `list::NIL` to allow any),
    /// but for W-TinyLfu's `keep` heavier than its window, which contests
    /// for room and may lose (see `TinyLfu::victim`).
    #[inline]
    pub(crate) fn victim(&mut self, keep: Token, entries: &impl Entries) -> Option<Token> {
        match self {
            Self::Lru(p) => p.victim(keep, entries),
            Self::Lfu(p) => p.victim(keep, entries),
            Self::TinyLfu(p) => p.victim(keep, entries),
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Self::Lru(p) => p.clear(),
            Self::Lfu(p) => p.clear(),
            Self::TinyLfu(p) => p.clear(),
        }
    }

    /// Resident tokens in eviction order (first = next victim for LRU and LFU).
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn order(&self, entries: &impl Entries) -> Vec<Token> {
        match self {
            Self::Lru(p) => p.order(entries),
            Self::Lfu(p) => p.order(entries),
            Self::TinyLfu(p) => p.order(entries),
        }
    }

    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn validate(&self, entries: &impl Entries) {
        if let Self::TinyLfu(p) = self {
            p.validate(entries);
        }
    }
}

/// Links and policy bytes for the stand-in entries of the policies' unit
/// tests, kept where a slab would keep them in the slots.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestSlots(
    std::cell::RefCell<std::collections::HashMap<Token, (Token, Token, u8)>>,
);

#[cfg(test)]
impl TestSlots {
    fn with<R>(&self, token: Token, f: impl FnOnce(&mut (Token, Token, u8)) -> R) -> R {
        let mut slots = self.0.borrow_mut();
        f(slots.entry(token).or_insert((list::DETACHED, list::NIL, 0)))
    }
}

/// Implements the slot-state part of [`Entries`] by a field holding
/// [`TestSlots`] (or anything with the same methods).
#[cfg(test)]
macro_rules! slot_state_in {
    ($($field:tt)+) => {
        fn link(&self, token: Token) -> (Token, Token) {
            self.$($field)+.link(token)
        }
        fn set_link(&self, token: Token, prev: Token, next: Token) {
            self.$($field)+.set_link(token, prev, next)
        }
        fn set_prev(&self, token: Token, prev: Token) {
            self.$($field)+.set_prev(token, prev)
        }
        fn set_next(&self, token: Token, next: Token) {
            self.$($field)+.set_next(token, next)
        }
        fn is_linked(&self, token: Token) -> bool {
            self.$($field)+.link(token).0 != $crate::policy::list::DETACHED
        }
        fn meta(&self, token: Token) -> u8 {
            self.$($field)+.meta(token)
        }
        fn set_meta(&self, token: Token, meta: u8) {
            self.$($field)+.set_meta(token, meta)
        }
        fn update_metas(&self, f: impl FnMut(u8) -> u8) {
            self.$($field)+.update_metas(f)
        }
    };
}
#[cfg(test)]
pub(crate) use slot_state_in;

#[cfg(test)]
impl TestSlots {
    pub(crate) fn link(&self, token: Token) -> (Token, Token) {
        self.with(token, |s| (s.0, s.1))
    }
    pub(crate) fn set_link(&self, token: Token, prev: Token, next: Token) {
        self.with(token, |s| (s.0, s.1) = (prev, next));
    }
    pub(crate) fn set_prev(&self, token: Token, prev: Token) {
        self.with(token, |s| s.0 = prev);
    }
    pub(crate) fn set_next(&self, token: Token, next: Token) {
        self.with(token, |s| s.1 = next);
    }
    pub(crate) fn meta(&self, token: Token) -> u8 {
        self.0.borrow().get(&token).map_or(0, |s| s.2)
    }
    pub(crate) fn set_meta(&self, token: Token, meta: u8) {
        self.with(token, |s| s.2 = meta);
    }
    pub(crate) fn update_metas(&self, mut f: impl FnMut(u8) -> u8) {
        for s in self.0.borrow_mut().values_mut() {
            s.2 = f(s.2);
        }
    }
}
