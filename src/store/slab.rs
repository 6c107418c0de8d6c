//! Entries live in a slab addressed by `u32` tokens: the table, the policy lists
//! and the read buffer hold 4-byte tokens instead of pointers, and an entry needs
//! no allocation of its own.

use std::num::NonZeroU32;
// The links and the policy byte are written only by the policy, under the
// shard's write lock or its policy lock, which order every access: they need
// no model checking, and loom's atomics would only slow its models down.
use std::sync::atomic::{AtomicU32, AtomicU8 as PlainU8};

use crate::policy::list::{DETACHED, NIL};
use crate::sync::{AtomicU8, Ordering};

/// Uncollected reads an entry counts before further reads write nothing: one,
/// so the count is a reference bit. On the 30 trace cases a cap of 1 scored
/// 45.90 against 45.77 for 2, 45.72 for 3 and 45.65 for 15, and it writes an
/// entry's line at most once per visit of the policy.
const HIT_CAP: u8 = 1;

/// The address of an entry within its shard.
pub(crate) type Token = u32;

/// One resident entry.
#[derive(Debug)]
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    /// `weight + 1`: the non-zero niche makes `Option<Entry>` as small as `Entry`.
    weight: NonZeroU32,
    /// The entry's links on its policy list: kept in the slot, so that the
    /// policy's walks over its lists read the lines of the entries they look
    /// at anyway, not those of a separate array as well.
    prev: AtomicU32,
    next: AtomicU32,
    /// Reads since the policy last collected them (deferred-read policies);
    /// lives in what would otherwise be padding.
    hits: AtomicU8,
    /// The policy's byte of state (W-TinyLFU's region and count).
    meta: PlainU8,
}

/// The largest weight one entry can have; larger weights are clamped to it.
pub(crate) const MAX_WEIGHT: u32 = u32::MAX - 1;

impl<K, V> Entry<K, V> {
    pub(crate) fn new(key: K, value: V, weight: u32) -> Self {
        let weight = NonZeroU32::MIN.saturating_add(weight.min(MAX_WEIGHT));
        Self {
            key,
            value,
            weight,
            prev: AtomicU32::new(DETACHED),
            next: AtomicU32::new(NIL),
            hits: AtomicU8::new(0),
            meta: PlainU8::new(0),
        }
    }

    #[inline]
    pub(crate) fn link(&self) -> (Token, Token) {
        (
            self.prev.load(Ordering::Relaxed),
            self.next.load(Ordering::Relaxed),
        )
    }

    #[inline]
    pub(crate) fn set_prev(&self, prev: Token) {
        self.prev.store(prev, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn set_next(&self, next: Token) {
        self.next.store(next, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn meta(&self) -> u8 {
        self.meta.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_meta(&self, meta: u8) {
        self.meta.store(meta, Ordering::Relaxed);
    }

    /// Notes a read for the policy to collect later. Once an entry holds
    /// `HIT_CAP` uncollected reads, further reads write nothing at all (a load,
    /// no store), so hot entries do not bounce cache lines between readers.
    #[inline]
    pub(crate) fn note_read(&self) {
        let hits = self.hits.load(Ordering::Relaxed);
        if hits < HIT_CAP {
            self.hits.store(hits + 1, Ordering::Relaxed);
        }
    }

    /// The reads noted since the last call, and resets the count.
    pub(crate) fn take_hits(&self) -> u8 {
        let hits = self.hits.load(Ordering::Relaxed);
        if hits != 0 {
            self.hits.store(0, Ordering::Relaxed);
        }
        hits
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight.get() - 1
    }

    pub(crate) fn set_weight(&mut self, weight: u32) {
        self.weight = NonZeroU32::MIN.saturating_add(weight.min(MAX_WEIGHT));
    }
}

/// A slab's slots, on line-aligned memory (see [`super::slots`]): a vacant
/// one is `None`.
pub(crate) type Slots<K, V> = super::slots::Slots<Entry<K, V>>;

/// `repr(C)` with the slots first: a lookup reads only their address and
/// length, which the shard keeps on the cache line of its lock word (see
/// `store::Map`). The slots are those two words, as a boxed slice is; a `Vec`
/// would be three, one too many for the line.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Slab<K, V> {
    /// Every allocated slot; those from `used` on have never held an entry.
    slots: Slots<K, V>,
    /// Slots handed out so far.
    used: usize,
    /// Vacant slots below `used`, reused last-freed first.
    free: Vec<Token>,
    /// The most slots it hands out: every token below the lists' two markers
    /// (lowered by tests, which cannot fill four billion slots).
    limit: usize,
    /// The most entries it will hold at once, when the shard knows (an
    /// unweighted shard holds at most its capacity, and one more while a
    /// new key's eviction is pending): growth stops there instead of
    /// doubling past it. `usize::MAX` when unknown.
    ceiling: usize,
}

/// The entries of a slab being emptied in place: see
/// [`Slab::drain_in_place`].
pub(crate) struct DrainInPlace<'a, K, V> {
    slots: std::slice::IterMut<'a, Option<Entry<K, V>>>,
}

impl<K, V> Iterator for DrainInPlace<'_, K, V> {
    type Item = Entry<K, V>;

    fn next(&mut self) -> Option<Entry<K, V>> {
        self.slots.find_map(Option::take)
    }
}

impl<K, V> Drop for DrainInPlace<'_, K, V> {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            drop(slot.take());
        }
    }
}

/// Slots a slab hands out at most: tokens `0..=u32::MAX - 2`, the top two
/// being the lists' markers (`NIL`, and `DETACHED` for a token on no list).
const MAX_SLOTS: usize = Token::MAX as usize - 1;

impl<K, V> Slab<K, V> {
    /// Room for `capacity` entries, growing to at most `ceiling` slots as long
    /// as no more are needed (see [`grow`](Self::grow)); `None` when the room
    /// cannot be allocated.
    pub(crate) fn with_capacity(capacity: usize, ceiling: usize) -> Option<Self> {
        Some(Self {
            slots: allocate(capacity)?,
            used: 0,
            free: Vec::new(),
            limit: MAX_SLOTS,
            ceiling,
        })
    }

    /// Whether no slot was handed out since the slab was made or
    /// [`reset`](Self::reset).
    pub(crate) fn untouched(&self) -> bool {
        self.used == 0
    }

    /// Takes every entry out, keeping the slots: the slab is then as
    /// [`reset`](Self::reset) leaves it. Entries the iterator has not yielded
    /// when it is dropped are dropped with it.
    pub(crate) fn drain_in_place(&mut self) -> DrainInPlace<'_, K, V> {
        self.free.clear();
        let used = std::mem::take(&mut self.used);
        DrainInPlace {
            slots: self.slots[..used].iter_mut(),
        }
    }

    /// Forgets the vacant slots of a slab that holds no entry, keeping its
    /// memory: the next entries fill it from the first slot again.
    pub(crate) fn reset(&mut self) {
        debug_assert_eq!(self.len(), 0, "only an empty slab is reset");
        self.used = 0;
        self.free.clear();
    }

    /// Whether every token is taken: the next entry needs one given back.
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.used >= self.limit && self.free.is_empty()
    }

    /// Hands out at most `limit` slots (tests of a full slab, which the
    /// loom build leaves out).
    #[cfg(all(test, not(larder_loom)))]
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_SLOTS);
    }

    pub(crate) fn len(&self) -> usize {
        self.used - self.free.len()
    }

    /// Slots allocated, used or not.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Stores `entry`; `None` only when it [`is_full`](Self::is_full).
    pub(crate) fn insert(&mut self, entry: Entry<K, V>) -> Option<Token> {
        if let Some(token) = self.free.pop() {
            self.slots[token as usize] = Some(entry);
            return Some(token);
        }
        if self.used >= self.limit {
            return None;
        }
        let token = self.used as Token;
        if self.used == self.slots.len() {
            self.grow();
        }
        self.slots[self.used] = Some(entry);
        self.used += 1;
        Some(token)
    }

    /// Doubles the slots (as a `Vec` grows), moving the entries over, but
    /// stops at the ceiling: a shard whose capacity is a power of two would
    /// otherwise double its slots for the one entry a new key holds over the
    /// capacity until its eviction, and keep twice the memory it needs.
    #[cold]
    fn grow(&mut self) {
        let mut len = (self.slots.len() * 2).max(4);
        if self.slots.len() < self.ceiling {
            len = len.min(self.ceiling);
        }
        let Some(mut slots) = allocate(len) else {
            match Slots::<K, V>::layout(len) {
                Some(layout) => std::alloc::handle_alloc_error(layout),
                None => panic!("capacity overflow: {len} slots"),
            }
        };
        for (to, from) in slots.iter_mut().zip(self.slots.iter_mut()) {
            *to = from.take();
        }
        self.slots = slots;
    }

    pub(crate) fn remove(&mut self, token: Token) -> Entry<K, V> {
        let entry = self.slots[token as usize]
            .take()
            .expect("removed token is resident");
        self.free.push(token);
        entry
    }

    /// Whether `token` holds an entry.
    pub(crate) fn contains(&self, token: Token) -> bool {
        self.slots.get(token as usize).is_some_and(Option::is_some)
    }

    /// Every slot, vacant ones as `None`.
    #[inline]
    pub(crate) fn slots(&self) -> &[Option<Entry<K, V>>] {
        &self.slots
    }

    #[inline]
    pub(crate) fn get(&self, token: Token) -> &Entry<K, V> {
        match &self.slots[token as usize] {
            Some(entry) => entry,
            None => not_resident(token),
        }
    }

    pub(crate) fn get_mut(&mut self, token: Token) -> &mut Entry<K, V> {
        match &mut self.slots[token as usize] {
            Some(entry) => entry,
            None => not_resident(token),
        }
    }

    /// Whether `token` names a resident entry.
    pub(crate) fn is_resident(&self, token: Token) -> bool {
        matches!(self.slots.get(token as usize), Some(Some(_)))
    }

    /// Resident entries from slot `from` on, with their tokens.
    pub(crate) fn iter_from(&self, from: usize) -> impl Iterator<Item = (Token, &Entry<K, V>)> {
        self.slots[..self.used]
            .iter()
            .enumerate()
            .skip(from)
            .filter_map(|(i, slot)| slot.as_ref().map(|e| (i as Token, e)))
    }
}

/// The panic of a lookup by a token whose slot is vacant (a broken
/// invariant). Out of line and taking the token by value: formatting it in
/// place made every caller store the token to the stack before each check.
#[cold]
#[inline(never)]
#[track_caller]
pub(crate) fn not_resident(token: Token) -> ! {
    unreachable!("token {token} is not resident")
}

/// `len` empty slots, exactly; `None` when they cannot be allocated.
fn allocate<K, V>(len: usize) -> Option<Slots<K, V>> {
    Slots::vacant(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_entry_costs_no_tag() {
        assert_eq!(
            std::mem::size_of::<Option<Entry<u64, u64>>>(),
            std::mem::size_of::<Entry<u64, u64>>()
        );
        assert_eq!(std::mem::size_of::<Entry<u64, u64>>(), 32);
    }

    #[test]
    fn reads_are_counted_up_to_the_cap_until_taken() {
        let e = Entry::new(1u8, 2u8, 1);
        assert_eq!(e.take_hits(), 0);
        e.note_read();
        assert_eq!(e.take_hits(), 1);
        for _ in 0..10 {
            e.note_read();
        }
        assert_eq!(e.take_hits(), HIT_CAP);
        assert_eq!(e.take_hits(), 0);
    }

    #[test]
    fn weights_round_trip_and_clamp() {
        let mut e = Entry::new(1u8, 2u8, 0);
        assert_eq!(e.weight(), 0);
        e.set_weight(7);
        assert_eq!(e.weight(), 7);
        e.set_weight(u32::MAX);
        assert_eq!(e.weight(), MAX_WEIGHT);
    }

    #[test]
    fn reuses_freed_slots() {
        let mut slab = Slab::with_capacity(0, usize::MAX).expect("nothing to allocate");
        let a = slab.insert(Entry::new(1, 1, 1)).unwrap();
        let b = slab.insert(Entry::new(2, 2, 1)).unwrap();
        assert_eq!(slab.remove(a).key, 1);
        assert!(!slab.is_resident(a));
        assert_eq!(slab.len(), 1);
        assert_eq!(slab.insert(Entry::new(3, 3, 1)), Some(a));
        assert_eq!(slab.get(b).key, 2);
        assert_eq!(slab.drain_in_place().count(), 2);
        assert_eq!(slab.len(), 0);
    }

    #[test]
    fn growing_and_draining_drop_every_value_once() {
        let counted = std::rc::Rc::new(());
        let mut slab = Slab::with_capacity(2, usize::MAX).expect("small");
        let tokens: Vec<Token> = (0..40)
            .map(|i| {
                let entry = Entry::new(format!("key {i}"), std::rc::Rc::clone(&counted), 1);
                slab.insert(entry).expect("room")
            })
            .collect();
        assert!(slab.capacity() >= 40, "grew from 2 slots");
        assert_eq!(
            slab.slots().as_ptr().addr() % 64,
            0,
            "grown slots are line-aligned"
        );
        assert_eq!(std::rc::Rc::strong_count(&counted), 41);
        for &t in tokens.iter().step_by(3) {
            assert!(slab.remove(t).key.starts_with("key "));
        }
        assert_eq!(std::rc::Rc::strong_count(&counted), 41 - 14);
        assert_eq!(slab.get(tokens[1]).key, "key 1");
        // Taking a few and dropping the rest with the iterator.
        let mut all = slab.drain_in_place();
        assert!(all.next().is_some());
        drop(all);
        assert_eq!(std::rc::Rc::strong_count(&counted), 1);
        assert_eq!(slab.len(), 0);
        assert!(slab.capacity() >= 40, "the slots kept");
        assert!(slab.untouched());
        assert!(slab
            .insert(Entry::new("again".into(), counted.clone(), 1))
            .is_some());
        assert_eq!(slab.get(0).key, "again", "filled from the first slot again");
    }
}
