//! Operation sequences against a naive model. The cache has 1, 2 or 4 shards
//! and a fixed hasher, so the model knows each key's shard and each shard's
//! share of the capacity (and the heaviest entry a shard takes, the smallest
//! share). Each shard's resident set must equal an exact `Vec` LRU's (or
//! LFU's) after every step; for W-TinyLFU,
//! whose admission the model does not replay, every read must return the last
//! value written or nothing, and a fitting insert must be readable at once
//! unless, heavier than a unit, it lost its contest for room at its own
//! insert (heard as `Size` in its step: an entry heavier than the admission
//! window is its own first candidate).
//! `validate()` checks the store's invariants (table, slab, policy regions and
//! weights, each shard within its capacity) after every step, and the total
//! weight must be within the capacity. Every entry written is, after each
//! step, either resident or handed to the listener exactly once; for LRU and
//! LFU the listener hears exactly the entries and causes the model removed,
//! and under every policy an entry heard as `Size` (other than the step's own
//! write, refused or undone) was resident before the step. The statistics'
//! `rejections` count exactly the too-heavy writes and the undone ones (below),
//! and with `evictions` they add up to the entries heard as `Size` and handed
//! back. `hits` and `misses` count exactly the lookups of `get` and of the
//! `get_or_load` calls that got past their key's `Hash` and `Eq`, as they
//! found the key or not; `loads`, the loaders run (none fails);
//! `tag_invalidations`, the entries heard as `Invalidated`; nothing expires.
//! With a `policy` byte of 128 or more the listener panics on every
//! value divisible by 4: the call that removed it panics, and only then, and
//! the cache still agrees with the model. `try_insert` hands a too-heavy
//! entry back instead of to the listener (unless the listener panicked on the
//! value it replaced: it then hears of the entry as `Size`); a `get_or_load`
//! miss writes what it loaded as an insert would, a hit reads as `get`;
//! `invalidate_entries_if` removes exactly the entries its predicate picks,
//! heard as `Invalidated`. `get_or_load_async` (polled to completion here: its
//! load is ready at once) must behave as `get_or_load`, and so must
//! `get_or_load_by_ref` and `get_or_load_by_ref_async`. `insert_with` tags
//! its entry `a` or `b` and must behave as `insert` otherwise; an entry
//! carries the tag of its last write (none for the other writes), and
//! `invalidate_tag` removes exactly the entries carrying it, heard as
//! `Invalidated`, a shard at a time as `invalidate_entries_if` does.
//!
//! Other callbacks panic too, and a call panics exactly when one of its
//! callbacks did, with the panic of the weigher or a key's `Hash` when one
//! of those panicked (the listener's own panics then go unreported):
//!
//! - With a nonzero `weigher_panics` byte the weigher panics on the (key,
//!   value, weight) triples it picks. It runs before the shard is touched: the
//!   write does not happen, nothing is heard, the cache is as it was (a
//!   `get_or_load` miss has run its loader by then, and caches nothing).
//! - With a nonzero `hash_panics` byte, the keys congruent to it mod 8 have a
//!   `Hash` that panics while `Arm` has armed it (only around the cache's own
//!   calls: the target's checks hash every key). A call on such a key panics
//!   at once and changes nothing (`get`, `peek`, `remove`, the writes, and a
//!   `get_or_load` runs no loader). Another key's `Hash`, met as a write makes
//!   room, undoes the write: the listener hears the written entry as `Size`
//!   (and the value it replaced as `Replaced`), the entries evicted before the
//!   panic stay out, heard as `Size`. For LRU and LFU they must be the first
//!   victims in the model's order, the write having needed the room, and the
//!   panic must come from the next victim (none of them panicking), or, for a
//!   new key that evicted nothing, from a key the table rehashed as it grew
//!   (one in the shard panics); the model then drops the key and those
//!   victims and must agree exactly again. `invalidate_entries_if` and
//!   `invalidate_all` sweep the shards in turn: with a `Hash` panicking, the
//!   shards before the one that panicked are swept whole, that one (which
//!   holds a picked key whose `Hash` panics) and the rest are left as they
//!   were.
//! - With a nonzero `eq_panics` byte, the keys congruent to it mod 8 have an
//!   `Eq` that panics while armed (either side of a comparison). Which
//!   comparisons a lookup makes is the table's business (it compares the
//!   keys whose hash tags match), so a call may end in such a panic only
//!   when armed, on such a key or with one resident, and it must then have
//!   changed nothing, run no loader and heard nothing.
//! - With a nonzero `clone_panics` byte, the keys congruent to it mod 8 have
//!   a `Clone` that panics while armed. The loading calls clone a key on a
//!   miss (`get_or_load_by_ref` to own it, every one to file its load), so a
//!   miss on such a key must end in that panic, before its loader runs,
//!   having changed nothing; no other call but a `compute_by_ref` that puts
//!   (below) may clone a key.
//!
//! `compute` runs its closure once its key's `Hash` and `Eq` got through,
//! on what `peek` would have returned, and then does what the closure said:
//! keeping changes nothing at all (not even LRU's or LFU's order) and counts
//! no hit or miss; a put is a `try_insert` of the closure's value (the
//! weigher runs after the closure, so a panicking `Eq` comes first); a
//! removal is a `remove`. Its outcome must name what it did, with the value.
//! `compute_by_ref` must behave the same; a put clones its key, after the
//! closure and before the weigher, so that a key whose `Clone` panics ends
//! such a call in that panic, having changed nothing.
#![no_main]

use arbitrary::Arbitrary;
use std::cell::Cell;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};

use larder::{Cache, Compute, Computed, EntryOptions, Eviction, RemovalCause};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Get(u8),
    Peek(u8),
    Insert(u8, u8, u8),
    /// `insert_with`, tagged `b` with `true`, else `a`.
    InsertWith(u8, u8, u8, bool),
    /// `try_insert`: a value too heavy for the cache comes back to the caller.
    TryInsert(u8, u8, u8),
    /// `get_or_load` with a loader yielding `(value, weight)`; by the last
    /// byte mod 4, `get_or_load`, `get_or_load_async`, `get_or_load_by_ref`
    /// or `get_or_load_by_ref_async`.
    GetOrLoad(u8, u8, u8, u8),
    Remove(u8),
    /// `invalidate_entries_if` on `(key + value) % (m % 5 + 2) == 0`.
    InvalidateIf(u8),
    InvalidateAll,
    /// `invalidate_tag` of `b` with `true`, else `a`.
    InvalidateTag(bool),
    /// `compute` of a key, whose closure, by the last byte mod 4, keeps what
    /// it finds, puts `(value, weight)`, removes the entry, or puts the value
    /// it found plus one (else `value`) with `weight`; with bit 2 of that
    /// byte, `compute_by_ref`.
    Compute(u8, u8, u8, u8),
    /// Arms (`true`) or disarms the panicking keys' `Hash` for the calls of
    /// the steps that follow.
    Arm(bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    capacity: u8,
    shards: u8,
    /// Nonzero: the weigher panics on the entries `weigher_fails` picks.
    weigher_panics: u8,
    /// The room the cache reserves up front, `% 64` entries: it must behave
    /// the same.
    initial: u8,
    /// Nonzero: keys congruent to it mod 8 have a `Hash` that panics while
    /// armed.
    hash_panics: u8,
    /// Nonzero: keys congruent to it mod 8 have an `Eq` that panics while
    /// armed.
    eq_panics: u8,
    /// Nonzero: keys congruent to it mod 8 have a `Clone` that panics while
    /// armed.
    clone_panics: u8,
    ops: Vec<Op>,
}

/// A fixed hash, so that the model knows each key's shard: the key times an
/// odd constant (the cache picks the shard from bits 32 and up).
#[derive(Default)]
struct Fixed(u64);

impl Hasher for Fixed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

#[derive(Clone, Copy)]
struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = Fixed;
    fn build_hasher(&self) -> Fixed {
        Fixed(0x5851_F42D_4C95_7F2D)
    }
}

/// The target's callbacks that panic, and how often they did in a step.
#[derive(Clone, Copy, Default)]
struct Panics {
    /// Whether the panicking keys' `Hash` panics now.
    armed: bool,
    /// The panicking keys, by their residue mod 8.
    residue: Option<u8>,
    /// The keys whose `Eq` panics, likewise.
    eq_residue: Option<u8>,
    /// The keys whose `Clone` panics, likewise.
    clone_residue: Option<u8>,
    hash: u32,
    weigher: u32,
    eq: u32,
    clone: u32,
}

thread_local! {
    static PANICS: Cell<Panics> = Cell::new(Panics::default());
}

fn panics() -> Panics {
    PANICS.with(Cell::get)
}

fn set_panics(f: impl FnOnce(&mut Panics)) {
    PANICS.with(|p| {
        let mut v = p.get();
        f(&mut v);
        p.set(v);
    });
}

/// Whether `k`'s `Hash` panics when armed.
fn panicky(k: u8) -> bool {
    panics().residue == Some(k % 8)
}

/// Whether `k`'s `Eq` panics when armed.
fn touchy(k: u8) -> bool {
    panics().eq_residue == Some(k % 8)
}

/// Whether `k`'s `Clone` panics when armed.
fn cloney(k: u8) -> bool {
    panics().clone_residue == Some(k % 8)
}

/// Whether the weigher panics on `(k, (v, w))`: one entry in 8, by `seed`.
fn weigher_fails(seed: u8, k: u8, v: u8, w: u8) -> bool {
    seed != 0 && u32::from_le_bytes([k, v, w, seed]).wrapping_mul(0x9E37_79B1) >> 29 == 0
}

/// A key that hashes, compares and clones as its byte does, except that the
/// keys `panicky` picks panic in `Hash`, those `touchy` picks in `Eq` and
/// those `cloney` picks in `Clone`, while armed. `Copy` for the target's own
/// use: the cache, generic over its keys, can only `Clone` them.
#[derive(Copy, Debug, Eq, PartialOrd, Ord)]
struct Key(u8);

#[allow(clippy::expl_impl_clone_on_copy)]
impl Clone for Key {
    fn clone(&self) -> Self {
        if panics().armed && cloney(self.0) {
            set_panics(|p| p.clone += 1);
            std::panic::panic_any(Deliberate::Clone);
        }
        *self
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        if panics().armed && (touchy(self.0) || touchy(other.0)) {
            set_panics(|p| p.eq += 1);
            std::panic::panic_any(Deliberate::Eq);
        }
        self.0 == other.0
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let p = panics();
        if p.armed && p.residue == Some(self.0 % 8) {
            set_panics(|p| p.hash += 1);
            std::panic::panic_any(Deliberate::Hash);
        }
        self.0.hash(state);
    }
}

/// Polls `f` until it is ready (a loader that is ready at once, on a cache
/// nobody else uses, never leaves it pending for long).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// (key, value, weight, frequency, last use); sorted in eviction order.
/// For W-TinyLFU only the last value written per key is meaningful.
struct Model {
    lfu: bool,
    capacity: u64,
    /// The heaviest entry the cache takes (the smallest shard's share).
    max_entry: u64,
    entries: Vec<(u8, u8, u64, u64, u64)>,
    clock: u64,
}

impl Model {
    fn sort(&mut self) {
        if self.lfu {
            self.entries.sort_by_key(|e| (e.3, e.4));
        } else {
            self.entries.sort_by_key(|e| e.4);
        }
    }
    fn pos(&self, k: u8) -> Option<usize> {
        self.entries.iter().position(|e| e.0 == k)
    }
    fn touch(&mut self, i: usize) {
        self.clock += 1;
        self.entries[i].3 += 1;
        self.entries[i].4 = self.clock;
        self.sort();
    }
    fn weight(&self) -> u64 {
        self.entries.iter().map(|e| e.2).sum()
    }
    /// The next victim in eviction order, never `keep`, nor an entry of
    /// weight 0 (the cache keeps those out of its policy: evicting one
    /// would free nothing).
    fn next_victim(&self, keep: Option<u8>) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| Some(e.0) != keep && e.2 != 0)
    }
    /// Evicts in order until the weight is within `limit`; returns the
    /// entries evicted, as the listener hears of them.
    fn evict(&mut self, limit: u64, keep: Option<u8>, out: &mut Vec<Removal>) {
        while self.weight() > limit {
            match self.next_victim(keep) {
                Some(i) => {
                    let e = self.entries.remove(i);
                    out.push((e.0, e.1, RemovalCause::Size));
                }
                None => break,
            }
        }
    }
    /// Returns what the listener hears of: a replaced value, evicted entries,
    /// or the written entry itself when it outweighs the capacity.
    fn insert(&mut self, k: u8, v: u8, w: u64) -> Vec<Removal> {
        let mut out = Vec::new();
        if w > self.max_entry {
            if let Some(i) = self.pos(k) {
                let e = self.entries.remove(i);
                out.push((k, e.1, RemovalCause::Replaced));
            }
            out.push((k, v, RemovalCause::Size));
            return out;
        }
        match self.pos(k) {
            Some(i) => {
                out.push((k, self.entries[i].1, RemovalCause::Replaced));
                if self.entries[i].2 == 0 && w != 0 {
                    // Weighed at last: it joins the policy as a new entry
                    // (then read, as any update is).
                    self.entries[i].3 = 1;
                }
                self.entries[i].1 = v;
                self.entries[i].2 = w;
                self.touch(i);
                self.evict(self.capacity, Some(k), &mut out);
            }
            None => {
                self.evict(self.capacity - w, None, &mut out);
                self.clock += 1;
                self.entries.push((k, v, w, 1, self.clock));
                self.sort();
            }
        }
        out
    }
    /// A write of `(k, v)` weighing `w` that another key's `Hash` undid while
    /// it made room, `heard` being what the listener heard of in its step:
    /// the key leaves (its old value `Replaced`, the write `Size`), and so do
    /// the victims evicted before the panic, which must be the first in
    /// eviction order, evicted only while the shard was over its capacity,
    /// none of them panicking; then the next victim must be one whose `Hash`
    /// panics, or, for a new key that evicted nothing, a key of the shard
    /// (the table rehashed them as it grew). Returns what the listener hears
    /// of.
    fn undone(&mut self, k: u8, v: u8, w: u64, heard: &[Removal]) -> Vec<Removal> {
        assert!(w <= self.max_entry, "a too-heavy write of {k} was undone");
        let mut out = Vec::new();
        let old = self.pos(k).map(|i| self.entries.remove(i));
        if let Some(e) = old {
            out.push((k, e.1, RemovalCause::Replaced));
        }
        let mut weight = self.weight() + w;
        let victims = heard
            .iter()
            .filter(|e| e.2 == RemovalCause::Size && e.0 != k);
        for &(victim, value, cause) in victims {
            assert!(
                weight > self.capacity,
                "{victim} evicted with the shard within its capacity"
            );
            let i = self.next_victim(None);
            let e = self
                .entries
                .remove(i.unwrap_or_else(|| panic!("{victim} evicted from nothing")));
            assert_eq!((victim, value), (e.0, e.1), "evicted out of order");
            assert!(!panicky(victim), "{victim} evicted, its `Hash` panicking");
            weight -= e.2;
            out.push((victim, value, cause));
        }
        let at_victim = weight > self.capacity
            && self
                .next_victim(None)
                .is_some_and(|i| panicky(self.entries[i].0));
        let as_grown = old.is_none() && out.is_empty() && self.entries.iter().any(|e| panicky(e.0));
        assert!(
            at_victim || as_grown,
            "the write of {k} undone without a panicking key in its way"
        );
        out.push((k, v, RemovalCause::Size));
        out
    }
}

/// The tags `insert_with` gives.
fn tag_name(b: bool) -> &'static str {
    if b {
        "b"
    } else {
        "a"
    }
}

/// (key, value, cause) as the listener hears of an entry leaving.
type Removal = (u8, u8, RemovalCause);

/// What a sweep picks, by key and value.
type Picks = Box<dyn Fn(u8, u8) -> bool>;

/// The payload of the target's deliberate panics, by the callback that
/// panicked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deliberate {
    Listener,
    Weigher,
    Hash,
    Eq,
    Clone,
}

/// Lets deliberate panics unwind to the target instead of aborting in
/// libFuzzer's panic hook, which every other panic still reaches.
fn allow_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Deliberate>() {
                previous(info);
            }
        }));
    });
}

/// Runs a call of the cache, the panicking keys' `Hash` armed if `armed`:
/// `Err` with the payload of the deliberate panic it ended in.
fn call<R>(armed: bool, f: impl FnOnce() -> R) -> Result<R, Deliberate> {
    set_panics(|p| p.armed = armed);
    let result = catch_unwind(AssertUnwindSafe(f));
    set_panics(|p| p.armed = false);
    result.map_err(|panic| {
        *panic
            .downcast_ref::<Deliberate>()
            .expect("only deliberate panics")
    })
}

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// It never reached the shard: the weigher or the key's own `Hash`
    /// panicked.
    Refused,
    /// Another key's `Hash` panicked as it made room.
    Undone,
    /// Written (or refused as too heavy), its listener perhaps panicking.
    Done,
}

/// A write's fate from the panic its call ended in, given whether its own
/// key's `Hash` and the weigher panic on it (either, or both: the cache may
/// run them in either order, before it touches the shard).
fn fate(outcome: Option<Deliberate>, own_hash: bool, weighs: bool) -> Fate {
    if own_hash || weighs {
        assert!(
            (own_hash && outcome == Some(Deliberate::Hash))
                || (weighs && outcome == Some(Deliberate::Weigher)),
            "a write whose key's Hash ({own_hash}) or weigher ({weighs}) panics ended in {outcome:?}"
        );
        return Fate::Refused;
    }
    match outcome {
        Some(Deliberate::Hash) => Fate::Undone,
        // A comparison at the lookup, before anything changed.
        Some(Deliberate::Eq) => Fate::Refused,
        _ => Fate::Done,
    }
}

/// A write that hands a too-heavy entry back to its caller (`try_insert`,
/// a compute's put) and went through ([`Fate::Done`]).
struct Tried {
    /// The key, value and weight byte written.
    entry: (u8, u8, u8),
    /// The heaviest entry the cache takes.
    base: u64,
    /// Under W-TinyLfu, its own insert evicted it.
    turned_away: bool,
}

impl Tried {
    fn new(entry: (u8, u8, u8), base: u64, turned_away: bool) -> Self {
        Self {
            entry,
            base,
            turned_away,
        }
    }

    /// Plays the write on `model` and `written` and checks the call's
    /// `answer` (the entry it handed back, if any; `Err` when it ended in
    /// the listener's panic) and what `cache` reads: returns what the
    /// listener should hear of, and whether an entry was written (resident
    /// or heard of from now on).
    fn check(
        &self,
        answer: Result<Option<&larder::Rejected<Key, (u8, u8)>>, &Deliberate>,
        model: &mut Model,
        written: &mut std::collections::HashMap<u8, u8>,
        cache: &Cache<Key, (u8, u8), FixedState>,
    ) -> (Vec<Removal>, bool) {
        let (k, v, w) = self.entry;
        let too_heavy = u64::from(w % 16) > self.base;
        match answer {
            Ok(None) => assert!(!too_heavy, "a too-heavy entry was accepted"),
            Ok(Some(rejected)) => {
                assert!(too_heavy, "a fitting entry was rejected");
                assert_eq!((rejected.key, rejected.value), (Key(k), (v, w)));
                assert_eq!(rejected.weight, u32::from(w % 16));
                assert_eq!(rejected.limit, self.base);
            }
            Err(_) => {}
        }
        let mut heard = model.insert(k, v, u64::from(w % 16));
        if !too_heavy && !self.turned_away {
            written.insert(k, v);
            assert_eq!(cache.peek(&Key(k)).map(|v| v.0), Some(v));
        } else {
            written.remove(&k);
            assert_eq!(cache.peek(&Key(k)), None);
        }
        // A too-heavy entry is handed back, never heard of, never
        // resident; or, when the listener panicked on the value it
        // replaced, heard of as `Size` after all (the panic cannot carry
        // it back).
        if too_heavy && answer.is_ok() {
            heard.retain(|e| e.2 != RemovalCause::Size);
            return (heard, false);
        }
        (heard, true)
    }
}

/// Checks a sweep over the shards (`invalidate_entries_if`, `invalidate_all`)
/// that removes the entries `picks` picks, heard as `cause`, given the
/// residents before it and what the listener heard: the shards before the
/// one a key's `Hash` panicked in are swept whole, that one, which holds a
/// picked key whose `Hash` panics, and the rest not at all. Returns which
/// shards were swept.
fn sweep(
    before: &[(u8, u8)],
    heard: &[Removal],
    cause: RemovalCause,
    picks: impl Fn(u8, u8) -> bool,
    shard_of: impl Fn(u8) -> usize,
    shards: usize,
    hash_panicked: bool,
) -> Vec<bool> {
    assert!(
        heard.iter().all(|e| e.2 == cause),
        "a sweep heard of as another cause: {heard:?}"
    );
    let mut swept = vec![false; shards];
    let mut stopped = false;
    for (s, swept) in swept.iter_mut().enumerate() {
        let mut picked: Vec<(u8, u8)> = before
            .iter()
            .copied()
            .filter(|&(k, v)| shard_of(k) == s && picks(k, v))
            .collect();
        let mut gone: Vec<(u8, u8)> = heard
            .iter()
            .filter(|e| shard_of(e.0) == s)
            .map(|e| (e.0, e.1))
            .collect();
        picked.sort_unstable();
        gone.sort_unstable();
        if stopped {
            assert!(gone.is_empty(), "shard {s} swept after the panic");
        } else if gone == picked {
            *swept = true;
        } else {
            assert!(
                gone.is_empty(),
                "shard {s} swept in part: {gone:?} of {picked:?}"
            );
            assert!(
                hash_panicked,
                "shard {s} left unswept, and nothing panicked"
            );
            assert!(
                picked.iter().any(|e| panicky(e.0)),
                "shard {s} left unswept, with no picked key whose Hash panics"
            );
            stopped = true;
        }
    }
    assert!(
        !hash_panicked || stopped,
        "a key's Hash panicked, and every shard was swept"
    );
    swept
}

fuzz_target!(|input: Input| {
    let capacity = u64::from(input.capacity.max(1));
    // 1, 2 or 4 shards, never more than the capacity's units.
    let mut shards = 1u64 << (input.shards % 3);
    while shards > capacity {
        shards /= 2;
    }
    let (base, extra) = (capacity / shards, capacity % shards);
    let eviction = match input.policy % 3 {
        0 => Eviction::Lru,
        1 => Eviction::Lfu,
        _ => Eviction::TinyLfu,
    };
    let exact = eviction != Eviction::TinyLfu;
    allow_deliberate_panics();
    let listener_panics = input.policy >= 128;
    let triggers = move |v: u8| listener_panics && v % 4 == 0;
    let residue = (input.hash_panics != 0).then_some(input.hash_panics % 8);
    let eq_residue = (input.eq_panics != 0).then_some(input.eq_panics % 8);
    let clone_residue = (input.clone_panics != 0).then_some(input.clone_panics % 8);
    PANICS.with(|p| {
        p.set(Panics {
            residue,
            eq_residue,
            clone_residue,
            ..Panics::default()
        })
    });
    let seed = input.weigher_panics;
    let weighs = move |k: u8, v: u8, w: u8| weigher_fails(seed, k, v, w);
    let mut written: std::collections::HashMap<u8, u8> = Default::default();
    // The tag of each key's last write that reached its shard (`None`:
    // untagged); what a resident carries.
    let mut tags: std::collections::HashMap<u8, Option<bool>> = Default::default();
    let heard: Arc<Mutex<Vec<Removal>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let cache: Cache<Key, (u8, u8), FixedState> = Cache::builder()
        .max_capacity(capacity)
        .shards(shards as usize)
        .initial_capacity(usize::from(input.initial % 64))
        .hasher(FixedState)
        .eviction(eviction)
        .record_stats()
        .weigher(move |k: &Key, v: &(u8, u8)| {
            if weighs(k.0, v.0, v.1) {
                set_panics(|p| p.weigher += 1);
                std::panic::panic_any(Deliberate::Weigher);
            }
            u32::from(v.1 % 16)
        })
        .eviction_listener(move |k: Key, v: (u8, u8), cause| {
            sink.lock().unwrap().push((k.0, v.0, cause));
            if triggers(v.0) {
                std::panic::panic_any(Deliberate::Listener);
            }
        })
        .build()
        .unwrap();
    // Hashed once, disarmed.
    let shard_table: Vec<usize> = (0..=255u8).map(|k| cache.shard_index(&Key(k))).collect();
    let shard_of = |k: u8| shard_table[usize::from(k)];
    let residents = || {
        let mut all: Vec<(u8, u8)> = cache.iter().map(|(k, v)| (k.0, v.0)).collect();
        all.sort_unstable();
        all
    };
    let mut armed = false;
    // Entries written (each insert makes one), and every removal heard so far.
    let mut inserts = 0usize;
    let mut heard_total = 0usize;
    // Writes refused as too heavy or undone; entries heard as `Size`, and
    // handed back by `try_insert`.
    let mut rejections = 0u64;
    let mut size_heard = 0u64;
    let mut handed_back = 0u64;
    // Lookups that found their key and that did not, loaders run, entries
    // heard as `Invalidated`.
    let (mut hits, mut misses, mut loads, mut invalidated) = (0u64, 0u64, 0u64, 0u64);
    // One model per shard: shard i holds `base + (i < extra)` units and
    // takes entries of up to `base`.
    let mut models: Vec<Model> = (0..shards)
        .map(|i| Model {
            lfu: eviction == Eviction::Lfu,
            capacity: base + u64::from(i < extra),
            max_entry: base,
            entries: Vec::new(),
            clock: 0,
        })
        .collect();
    for op in input.ops.into_iter().take(2_000) {
        // `insert_with` runs as `insert` does, its tag aside.
        let (op, tag) = match op {
            Op::InsertWith(k, v, w, b) => (Op::Insert(k, v, w), Some(b)),
            op => (op, None),
        };
        let before = residents();
        set_panics(|p| (p.hash, p.weigher, p.eq, p.clone) = (0, 0, 0, 0));
        // Whether a comparison the step's call makes may panic: armed, with
        // a key whose `Eq` panics on either side of it.
        let comparable = |k: u8| armed && (touchy(k) || before.iter().any(|e| touchy(e.0)));
        let mut expected_heard: Vec<Removal> = Vec::new();
        // The deliberate panic the step's call ended in.
        let mut outcome: Option<Deliberate> = None;
        // A write's (key, value, weight) and what became of it.
        let mut write: Option<(u8, u8, u8, Fate)> = None;
        // The step leaves the cache as it was, and nothing is heard.
        let mut unchanged = false;
        // A loading call's miss on a key whose `Clone` panics: the one
        // call that may end in that panic.
        let mut clones = false;
        // A sweep's checks, once the step's removals are heard: what it
        // picks, the cause it removes with.
        let mut swept: Option<(Picks, RemovalCause)> = None;
        // Under W-TinyLfu, a write heavier than a unit that its own insert
        // evicted: heard as `Size` in this step (what `heard` holds).
        let turned_away = |k: u8, v: u8, w: u8| {
            !exact && w % 16 > 1 && heard.lock().unwrap().contains(&(k, v, RemovalCause::Size))
        };
        match op {
            Op::Arm(on) => armed = on,
            Op::Get(k) => {
                let got = call(armed, || cache.get(&Key(k)));
                outcome = got.as_ref().err().copied();
                if armed && panicky(k) {
                    assert_eq!(outcome, Some(Deliberate::Hash));
                    unchanged = true;
                } else if outcome == Some(Deliberate::Eq) {
                    assert!(comparable(k), "a get panicked in an Eq that was not armed");
                    unchanged = true;
                } else {
                    let got = got
                        .expect("a get panics only in its key's Hash")
                        .map(|(v, w)| (v, w % 16));
                    if got.is_some() {
                        hits += 1;
                    } else {
                        misses += 1;
                    }
                    if exact {
                        let model = &mut models[shard_of(k)];
                        let expected = model.pos(k).map(|i| {
                            let e = model.entries[i];
                            model.touch(i);
                            (e.1, e.2 as u8)
                        });
                        assert_eq!(got, expected);
                    } else if let Some((v, _)) = got {
                        assert_eq!(Some(&v), written.get(&k));
                    }
                }
            }
            Op::Peek(k) => {
                let got = call(armed, || cache.peek(&Key(k)).map(|v| v.0));
                outcome = got.as_ref().err().copied();
                if armed && panicky(k) {
                    assert_eq!(outcome, Some(Deliberate::Hash));
                    unchanged = true;
                } else if outcome == Some(Deliberate::Eq) {
                    assert!(comparable(k), "a peek panicked in an Eq that was not armed");
                    unchanged = true;
                } else {
                    let got = got.expect("a peek panics only in its key's Hash");
                    if exact {
                        let model = &models[shard_of(k)];
                        assert_eq!(got, model.pos(k).map(|i| model.entries[i].1));
                    } else if let Some(v) = got {
                        assert_eq!(Some(&v), written.get(&k));
                    }
                }
            }
            Op::Insert(k, v, w) => {
                outcome = call(armed, || match tag {
                    Some(b) => {
                        let options = EntryOptions::new().tags([tag_name(b)]);
                        cache.insert_with(Key(k), (v, w), options)
                    }
                    None => cache.insert(Key(k), (v, w)),
                })
                .err();
                let fate = fate(outcome, armed && panicky(k), weighs(k, v, w));
                if outcome == Some(Deliberate::Eq) {
                    assert!(
                        comparable(k),
                        "an insert panicked in an Eq that was not armed"
                    );
                }
                if fate == Fate::Done {
                    inserts += 1;
                    expected_heard = models[shard_of(k)].insert(k, v, u64::from(w % 16));
                    if u64::from(w % 16) <= base && !turned_away(k, v, w) {
                        written.insert(k, v);
                        assert_eq!(
                            cache.peek(&Key(k)).map(|v| v.0),
                            Some(v),
                            "a fitting insert is readable"
                        );
                    } else {
                        written.remove(&k);
                        assert_eq!(cache.peek(&Key(k)), None);
                    }
                }
                write = Some((k, v, w, fate));
            }
            Op::TryInsert(k, v, w) => {
                let result = call(armed, || cache.try_insert(Key(k), (v, w)));
                outcome = result.as_ref().err().copied();
                let fate = fate(outcome, armed && panicky(k), weighs(k, v, w));
                if outcome == Some(Deliberate::Eq) {
                    assert!(
                        comparable(k),
                        "a try_insert panicked in an Eq that was not armed"
                    );
                }
                if fate == Fate::Done {
                    let tried = Tried::new((k, v, w), base, turned_away(k, v, w));
                    let answer = result.as_ref().map(|r| r.as_ref().err());
                    let (heard, written_one) =
                        tried.check(answer, &mut models[shard_of(k)], &mut written, &cache);
                    expected_heard = heard;
                    inserts += usize::from(written_one);
                    handed_back += u64::from(matches!(result, Ok(Err(_))));
                }
                write = Some((k, v, w, fate));
            }
            Op::GetOrLoad(k, v, w, mode) => {
                let own_hash = armed && panicky(k);
                let resident = before.iter().any(|e| e.0 == k);
                let mut loaded = false;
                let got = call(armed, || match mode % 4 {
                    0 => cache.get_or_load(Key(k), |_| {
                        loaded = true;
                        (v, w)
                    }),
                    1 => block_on(cache.get_or_load_async(Key(k), async {
                        loaded = true;
                        (v, w)
                    })),
                    2 => cache.get_or_load_by_ref(&Key(k), |_| {
                        loaded = true;
                        (v, w)
                    }),
                    _ => block_on(cache.get_or_load_by_ref_async(&Key(k), async {
                        loaded = true;
                        (v, w)
                    })),
                });
                outcome = got.as_ref().err().copied();
                let compared = outcome == Some(Deliberate::Eq);
                loads += u64::from(loaded);
                if !own_hash && !compared {
                    if resident {
                        hits += 1;
                    } else {
                        misses += 1;
                    }
                }
                // A miss clones the key, after the lookup's `Hash` and `Eq`.
                let cloned = armed && cloney(k) && !resident && !own_hash && !compared;
                assert_eq!(
                    outcome == Some(Deliberate::Clone),
                    cloned,
                    "a miss on a key whose Clone panics ends in that panic, and only one"
                );
                assert_eq!(
                    loaded,
                    !resident && !own_hash && !compared && !cloned,
                    "the loader runs exactly on a miss"
                );
                if cloned {
                    clones = true;
                    unchanged = true;
                } else if compared {
                    assert!(
                        comparable(k),
                        "a get_or_load panicked in an Eq that was not armed"
                    );
                    unchanged = true;
                } else if own_hash {
                    write = Some((k, v, w, fate(outcome, true, false)));
                } else if resident {
                    let got = got.expect("a hit reaches no callback that panics").0;
                    if exact {
                        let model = &mut models[shard_of(k)];
                        let i = model.pos(k).expect("resident");
                        assert_eq!(got, model.entries[i].1);
                        model.touch(i);
                    } else {
                        assert_eq!(Some(&got), written.get(&k));
                    }
                } else {
                    let fate = fate(outcome, false, weighs(k, v, w));
                    if fate == Fate::Done {
                        if let Ok(got) = got {
                            assert_eq!(got, (v, w), "the caller gets what it loaded");
                        }
                        inserts += 1;
                        expected_heard = models[shard_of(k)].insert(k, v, u64::from(w % 16));
                        if u64::from(w % 16) <= base && !turned_away(k, v, w) {
                            written.insert(k, v);
                            assert_eq!(cache.peek(&Key(k)).map(|v| v.0), Some(v));
                        } else {
                            written.remove(&k);
                            assert_eq!(cache.peek(&Key(k)), None);
                        }
                    }
                    write = Some((k, v, w, fate));
                }
            }
            Op::Compute(k, v, w, mode) => {
                let mut found = None;
                let by_ref = mode & 4 != 0;
                let f = |current: Option<&(u8, u8)>| {
                    let current = current.copied();
                    found = Some(current);
                    match mode % 4 {
                        0 => Compute::Keep,
                        1 => Compute::Put((v, w)),
                        2 => Compute::Remove,
                        _ => Compute::Put((current.map_or(v, |c| c.0.wrapping_add(1)), w)),
                    }
                };
                let result = call(armed, || match by_ref {
                    true => cache.compute_by_ref(&Key(k), f),
                    false => cache.compute(Key(k), f),
                });
                outcome = result.as_ref().err().copied();
                let own_hash = armed && panicky(k);
                let compared = !own_hash && outcome == Some(Deliberate::Eq);
                if compared {
                    assert!(
                        comparable(k),
                        "a compute panicked in an Eq that was not armed"
                    );
                }
                assert_eq!(
                    found.is_some(),
                    !own_hash && !compared,
                    "the closure runs once the key's Hash and Eq got through"
                );
                if own_hash {
                    assert_eq!(outcome, Some(Deliberate::Hash));
                    unchanged = true;
                } else if compared {
                    unchanged = true;
                } else {
                    let found = found.expect("the closure ran");
                    let resident = before.iter().find(|e| e.0 == k).map(|e| e.1);
                    assert_eq!(
                        found.map(|f| f.0),
                        resident,
                        "the closure finds what peek would"
                    );
                    if let (true, Some((v, w))) = (exact, found) {
                        let model = &models[shard_of(k)];
                        let i = model.pos(k).expect("resident");
                        assert_eq!(
                            (v, u64::from(w % 16)),
                            (model.entries[i].1, model.entries[i].2)
                        );
                    }
                    match mode % 4 {
                        0 => {
                            let expected = found.map_or(Computed::Absent, Computed::Unchanged);
                            assert_eq!(
                                result.expect("keeping calls nothing that panics"),
                                Ok(expected)
                            );
                            unchanged = true;
                        }
                        2 => {
                            let model = &mut models[shard_of(k)];
                            if let Some(i) = model.pos(k) {
                                model.entries.remove(i);
                            }
                            expected_heard
                                .extend(found.map(|(v, _)| (k, v, RemovalCause::Explicit)));
                            match result {
                                Ok(out) => assert_eq!(
                                    out,
                                    Ok(found.map_or(Computed::Absent, Computed::Removed))
                                ),
                                Err(panic) => assert_eq!(
                                    panic,
                                    Deliberate::Listener,
                                    "a removing compute panics only in the listener, past its lookup"
                                ),
                            }
                            written.remove(&k);
                            assert_eq!(cache.peek(&Key(k)), None);
                        }
                        _ if by_ref && armed && cloney(k) => {
                            // A put owns the borrowed key first: its
                            // `Clone` panics, before the weigher, changing
                            // nothing.
                            assert_eq!(outcome, Some(Deliberate::Clone));
                            clones = true;
                            unchanged = true;
                        }
                        _ => {
                            let v = match (mode % 4, found) {
                                (3, Some(f)) => f.0.wrapping_add(1),
                                _ => v,
                            };
                            let fate = if weighs(k, v, w) {
                                assert_eq!(outcome, Some(Deliberate::Weigher));
                                Fate::Refused
                            } else if outcome == Some(Deliberate::Hash) {
                                Fate::Undone
                            } else {
                                Fate::Done
                            };
                            if fate == Fate::Done {
                                let tried = Tried::new((k, v, w), base, turned_away(k, v, w));
                                let answer = result.as_ref().map(|r| r.as_ref().err());
                                let (heard, written_one) = tried.check(
                                    answer,
                                    &mut models[shard_of(k)],
                                    &mut written,
                                    &cache,
                                );
                                expected_heard = heard;
                                inserts += usize::from(written_one);
                                handed_back += u64::from(matches!(result, Ok(Err(_))));
                                if let Ok(Ok(out)) = result {
                                    let expected = match found {
                                        Some(_) => Computed::Replaced((v, w)),
                                        None => Computed::Inserted((v, w)),
                                    };
                                    assert_eq!(out, expected);
                                }
                            }
                            write = Some((k, v, w, fate));
                        }
                    }
                }
            }
            Op::InvalidateIf(m) => {
                let picks =
                    move |k: u8, v: u8| (u32::from(k) + u32::from(v)) % u32::from(m % 5 + 2) == 0;
                outcome = call(armed, || {
                    cache.invalidate_entries_if(|k, v| picks(k.0, v.0))
                })
                .err();
                swept = Some((Box::new(picks), RemovalCause::Invalidated));
            }
            Op::Remove(k) => {
                let got = call(armed, || cache.remove(&Key(k)).map(|v| v.0));
                outcome = got.as_ref().err().copied();
                if armed && panicky(k) {
                    assert_eq!(outcome, Some(Deliberate::Hash));
                    unchanged = true;
                } else if outcome == Some(Deliberate::Eq) {
                    assert!(
                        comparable(k),
                        "a remove panicked in an Eq that was not armed"
                    );
                    unchanged = true;
                } else {
                    let model = &mut models[shard_of(k)];
                    let expected = model.pos(k).map(|i| model.entries.remove(i).1);
                    expected_heard.extend(expected.map(|v| (k, v, RemovalCause::Explicit)));
                    match got {
                        Ok(got) if exact => assert_eq!(got, expected),
                        Ok(Some(v)) => assert_eq!(Some(&v), written.get(&k)),
                        Ok(None) => {}
                        // The value was removed; the listener's panic took
                        // the place of its return.
                        Err(panic) => assert_eq!(
                            panic,
                            Deliberate::Listener,
                            "a remove panics only in its key's Hash or the listener"
                        ),
                    }
                    written.remove(&k);
                    assert_eq!(cache.peek(&Key(k)), None);
                }
            }
            Op::InvalidateAll => {
                outcome = call(armed, || cache.invalidate_all()).err();
                swept = Some((Box::new(|_, _| true), RemovalCause::Explicit));
            }
            Op::InvalidateTag(b) => {
                outcome = call(armed, || cache.invalidate_tag(tag_name(b))).err();
                let carriers = tags.clone();
                swept = Some((
                    Box::new(move |k, _| carriers.get(&k) == Some(&Some(b))),
                    RemovalCause::Invalidated,
                ));
            }
            Op::InsertWith(..) => unreachable!("run as an insert"),
        }
        cache.validate();
        assert!(cache.weighted_size() <= capacity);
        let step_heard = std::mem::take(&mut *heard.lock().unwrap());
        heard_total += step_heard.len();
        size_heard += step_heard
            .iter()
            .filter(|e| e.2 == RemovalCause::Size)
            .count() as u64;
        invalidated += step_heard
            .iter()
            .filter(|e| e.2 == RemovalCause::Invalidated)
            .count() as u64;
        let Panics {
            hash: hash_panics,
            weigher: weigher_panics,
            eq: eq_panics,
            clone: clone_panics,
            ..
        } = panics();
        assert!(
            clone_panics <= u32::from(outcome == Some(Deliberate::Clone)),
            "a key was cloned, and its Clone's panic did not end the call"
        );
        let listener_panicked = step_heard.iter().any(|e| triggers(e.1));
        match outcome {
            None => assert!(
                !listener_panicked && hash_panics == 0 && weigher_panics == 0 && eq_panics == 0,
                "a callback panicked, and the call did not"
            ),
            Some(Deliberate::Listener) => assert!(
                listener_panicked && hash_panics == 0 && weigher_panics == 0 && eq_panics == 0,
                "the call panicked as the listener, which did not (or another callback did)"
            ),
            Some(Deliberate::Weigher) => assert!(
                weigher_panics == 1 && hash_panics == 0 && eq_panics == 0 && step_heard.is_empty(),
                "the call panicked as the weigher"
            ),
            Some(Deliberate::Hash) => assert!(
                hash_panics >= 1 && weigher_panics == 0 && eq_panics == 0,
                "the call panicked as a key's Hash"
            ),
            Some(Deliberate::Eq) => assert!(
                eq_panics == 1 && hash_panics == 0 && weigher_panics == 0,
                "the call panicked as a key's Eq"
            ),
            Some(Deliberate::Clone) => assert!(
                clones
                    && clone_panics == 1
                    && eq_panics == 0
                    && hash_panics == 0
                    && weigher_panics == 0
                    && step_heard.is_empty(),
                "the call panicked as a key's Clone"
            ),
        }
        // The step's own write, which may be heard as `Size` without having
        // been resident.
        let mut own = None;
        if let Some((k, v, w, fate)) = write {
            match fate {
                Fate::Refused => unchanged = true,
                Fate::Done => {
                    tags.insert(k, tag);
                    own = Some((k, v));
                    if u64::from(w % 16) > base {
                        rejections += 1;
                    }
                }
                Fate::Undone => {
                    own = Some((k, v));
                    inserts += 1;
                    rejections += 1;
                    if exact {
                        expected_heard =
                            models[shard_of(k)].undone(k, v, u64::from(w % 16), &step_heard);
                    } else {
                        assert!(
                            step_heard.contains(&(k, v, RemovalCause::Size)),
                            "an undone write is heard as Size"
                        );
                        if let Some(&(_, old)) = before.iter().find(|e| e.0 == k) {
                            assert!(
                                step_heard.contains(&(k, old, RemovalCause::Replaced)),
                                "the value an undone write replaced is heard"
                            );
                        }
                    }
                    written.remove(&k);
                    assert_eq!(cache.peek(&Key(k)), None, "an undone write stays");
                }
            }
        }
        if let Some((picks, cause)) = swept {
            let hash_panicked = outcome == Some(Deliberate::Hash);
            let swept = sweep(
                &before,
                &step_heard,
                cause,
                &picks,
                shard_of,
                shards as usize,
                hash_panicked,
            );
            for (model, &swept) in models.iter_mut().zip(&swept) {
                if swept {
                    let (gone, kept): (Vec<_>, Vec<_>) =
                        model.entries.drain(..).partition(|e| picks(e.0, e.1));
                    model.entries = kept;
                    expected_heard.extend(gone.iter().map(|e| (e.0, e.1, cause)));
                }
            }
            written.retain(|&k, &mut v| !(swept[shard_of(k)] && picks(k, v)));
            assert!(
                cache
                    .iter()
                    .all(|(k, v)| !(swept[shard_of(k.0)] && picks(k.0, v.0))),
                "a picked entry stayed"
            );
        }
        if unchanged {
            assert!(
                step_heard.is_empty(),
                "a call that changed nothing was heard"
            );
            assert_eq!(residents(), before, "a call that changed nothing did");
        }
        for e in &step_heard {
            if e.2 == RemovalCause::Size && Some((e.0, e.1)) != own {
                assert!(
                    before.contains(&(e.0, e.1)),
                    "{e:?} evicted, and it was not resident"
                );
            }
        }
        assert_eq!(
            inserts,
            cache.len() + heard_total,
            "every entry written is resident or was heard of once"
        );
        let stats = cache.stats();
        assert_eq!(
            stats.rejections, rejections,
            "rejections: too-heavy and undone writes"
        );
        assert_eq!(
            stats.evictions + stats.rejections,
            size_heard + handed_back,
            "evictions and rejections: heard as Size or handed back"
        );
        assert_eq!(
            (stats.hits, stats.misses),
            (hits, misses),
            "hits and misses"
        );
        assert_eq!((stats.loads, stats.load_failures), (loads, 0), "loads");
        assert_eq!(stats.tag_invalidations, invalidated, "invalidations heard");
        assert_eq!(stats.expirations, 0, "nothing expires");
        if exact {
            let mut step_heard = step_heard;
            step_heard.sort_unstable();
            expected_heard.sort_unstable();
            assert_eq!(step_heard, expected_heard, "the listener hears what left");
            let mut expected: Vec<(u8, u8)> = models
                .iter()
                .flat_map(|m| m.entries.iter().map(|e| (e.0, e.1)))
                .collect();
            expected.sort_unstable();
            assert_eq!(residents(), expected);
            let weight: u64 = models.iter().map(Model::weight).sum();
            assert_eq!(cache.weighted_size(), weight);
        }
    }
});
