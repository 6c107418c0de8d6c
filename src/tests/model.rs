//! Random operation sequences against naive reference caches.
//!
//! With one shard the cache must agree with the model exactly: same lookups,
//! same eviction order, same removals told to the listener. With many shards,
//! the bound and the get/insert/remove semantics must hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use std::time::Duration;

use crate::{Cache, Compute, Computed, EntryOptions, Eviction, RemovalCause};

/// Values carry their own weight so the weigher is a pure function.
type Val = (u16, u32);

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Peek(u8),
    Contains(u8),
    Insert(u8, Val),
    Remove(u8),
    InvalidateAll,
    Compute(u8, Act),
    /// `get_or_load_all` of the keys, the loader answering the `i`th key
    /// it is asked for with `answers[i]`.
    LoadAll(Vec<u8>, Vec<Option<Val>>),
}

/// What a [`Op::Compute`] closure does with what it finds.
#[derive(Debug, Clone, Copy)]
enum Act {
    Keep,
    Put(Val),
    /// The value found, counted up (or 0), weighing this much.
    Bump(u32),
    Remove,
}

impl Act {
    fn apply(self, current: Option<&Val>) -> Compute<Val> {
        match self {
            Act::Keep => Compute::Keep,
            Act::Put(v) => Compute::Put(v),
            Act::Bump(w) => Compute::Put((current.map_or(0, |v| v.0.wrapping_add(1)), w)),
            Act::Remove => Compute::Remove,
        }
    }
}

/// The outcome of a compute that found `current` and did `compute`, when
/// a value it put fits.
fn computed(current: Option<Val>, compute: &Compute<Val>) -> Computed<Val> {
    match (compute, current) {
        (Compute::Keep, Some(v)) => Computed::Unchanged(v),
        (Compute::Remove, Some(v)) => Computed::Removed(v),
        (Compute::Keep | Compute::Remove, None) => Computed::Absent,
        (Compute::Put(v) | Compute::PutWith(v, _), Some(_)) => Computed::Replaced(*v),
        (Compute::Put(v) | Compute::PutWith(v, _), None) => Computed::Inserted(*v),
    }
}

/// Runs an [`Op::Compute`] on `cache` (`compute_by_ref` for odd keys): what
/// the closure found, and the outcome (a rejected value as `Err`).
fn compute<S: std::hash::BuildHasher>(
    cache: &Cache<u8, Val, S>,
    k: u8,
    act: Act,
    options: Option<EntryOptions>,
) -> (Option<Val>, Result<Computed<Val>, Val>) {
    let mut found = None;
    let f = |v: Option<&Val>| {
        found = Some(v.copied());
        match (act.apply(v), options) {
            (Compute::Put(v), Some(options)) => Compute::PutWith(v, options),
            (compute, _) => compute,
        }
    };
    let out = match k % 2 {
        0 => cache.compute(k, f),
        _ => cache.compute_by_ref(&k, f),
    };
    let found = found.expect("the closure runs once");
    (found, out.map_err(|rejected| rejected.value))
}

/// Runs an [`Op::LoadAll`]: the keys its loader was asked for (it is
/// called at most once here: no other caller loads), and what it returned.
fn load_all<S: std::hash::BuildHasher>(
    cache: &Cache<u8, Val, S>,
    keys: &[u8],
    answers: &[Option<Val>],
) -> (Vec<u8>, Vec<Option<Val>>) {
    let mut asked = Vec::new();
    let got = cache.get_or_load_all(keys.iter().copied(), |ids| {
        assert!(asked.is_empty(), "the loader is called once");
        asked = ids.to_vec();
        ids.iter()
            .zip(answers)
            .filter_map(|(&k, answer)| Some((k, (*answer)?)))
            .collect::<Vec<_>>()
    });
    (asked, got)
}

fn op(keys: u8, max_weight: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..keys).prop_map(Op::Get),
        1 => (0..keys).prop_map(Op::Peek),
        1 => (0..keys).prop_map(Op::Contains),
        4 => (0..keys, any::<u16>(), 0..=max_weight).prop_map(|(k, v, w)| Op::Insert(k, (v, w))),
        1 => (0..keys).prop_map(Op::Remove),
        1 => Just(Op::InvalidateAll),
        3 => (0..keys, act(max_weight)).prop_map(|(k, a)| Op::Compute(k, a)),
        2 => (
            proptest::collection::vec(0..keys, 0..6),
            proptest::collection::vec(proptest::option::of((any::<u16>(), 0..=max_weight)), 6),
        )
            .prop_map(|(keys, answers)| Op::LoadAll(keys, answers)),
    ]
}

fn act(max_weight: u32) -> impl Strategy<Value = Act> {
    prop_oneof![
        1 => Just(Act::Keep),
        2 => (any::<u16>(), 0..=max_weight).prop_map(Act::Put),
        2 => (0..=max_weight).prop_map(Act::Bump),
        1 => Just(Act::Remove),
    ]
}

/// The naive reference: a `Vec` in eviction order (first = next victim).
struct Model {
    eviction: Eviction,
    capacity: u64,
    /// (key, value, frequency, last use)
    entries: Vec<(u8, Val, u64, u64)>,
    clock: u64,
    removed: Vec<(u8, Val, RemovalCause)>,
}

impl Model {
    fn weight(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.1 .1)).sum()
    }

    fn sort(&mut self) {
        if self.eviction == Eviction::Lfu {
            self.entries.sort_by_key(|e| (e.2, e.3));
        } else {
            self.entries.sort_by_key(|e| e.3);
        }
    }

    fn pos(&self, k: u8) -> Option<usize> {
        self.entries.iter().position(|e| e.0 == k)
    }

    fn touch(&mut self, i: usize) {
        self.clock += 1;
        self.entries[i].2 += 1;
        self.entries[i].3 = self.clock;
        self.sort();
    }

    fn get(&mut self, k: u8) -> Option<Val> {
        let i = self.pos(k)?;
        let v = self.entries[i].1;
        self.touch(i);
        Some(v)
    }

    /// Entries of weight 0 are never evicted to make room: they would free
    /// nothing (the cache keeps them out of its policy).
    fn evict(&mut self, limit: u64, keep: Option<u8>) {
        while self.weight() > limit {
            let next = self
                .entries
                .iter()
                .position(|e| Some(e.0) != keep && e.1 .1 != 0);
            let Some(i) = next else {
                break;
            };
            let (k, v, ..) = self.entries.remove(i);
            self.removed.push((k, v, RemovalCause::Size));
        }
    }

    fn insert(&mut self, k: u8, v: Val) {
        let w = u64::from(v.1);
        if w > self.capacity {
            if let Some(i) = self.pos(k) {
                let old = self.entries.remove(i);
                self.removed.push((k, old.1, RemovalCause::Replaced));
            }
            self.removed.push((k, v, RemovalCause::Size));
            return;
        }
        match self.pos(k) {
            Some(i) => {
                let old = std::mem::replace(&mut self.entries[i].1, v);
                self.removed.push((k, old, RemovalCause::Replaced));
                if old.1 == 0 && w != 0 {
                    // Weighed at last: it joins the policy as a new entry
                    // (then read, as any update is).
                    self.entries[i].2 = 1;
                }
                self.touch(i);
                self.evict(self.capacity, Some(k));
            }
            None => {
                self.evict(self.capacity - w, None);
                self.clock += 1;
                self.entries.push((k, v, 1, self.clock));
                self.sort();
            }
        }
    }

    /// A compute that put `v`: as an insert, but a value too heavy comes
    /// back to the caller instead of going to the listener.
    fn compute_put(&mut self, k: u8, v: Val) -> Result<(), Val> {
        if u64::from(v.1) <= self.capacity {
            self.insert(k, v);
            return Ok(());
        }
        if let Some(i) = self.pos(k) {
            let old = self.entries.remove(i);
            self.removed.push((k, old.1, RemovalCause::Replaced));
        }
        Err(v)
    }

    fn remove(&mut self, k: u8) -> Option<Val> {
        let i = self.pos(k)?;
        let (k, v, ..) = self.entries.remove(i);
        self.removed.push((k, v, RemovalCause::Explicit));
        Some(v)
    }
}

type Log = Arc<Mutex<Vec<(u8, Val, RemovalCause)>>>;

fn build(eviction: Eviction, capacity: u64, shards: usize) -> (Cache<u8, Val>, Log) {
    let log = Log::default();
    let sink = log.clone();
    let cache = Cache::builder()
        .max_capacity(capacity)
        .shards(shards)
        .eviction(eviction)
        .weigher(|_, v: &Val| v.1)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    (cache, log)
}

fn exact_agreement(eviction: Eviction, capacity: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (cache, log) = build(eviction, capacity, 1);
    let mut model = Model {
        eviction,
        capacity,
        entries: Vec::new(),
        clock: 0,
        removed: Vec::new(),
    };
    for op in ops {
        match op {
            Op::Get(k) => prop_assert_eq!(cache.get(&k), model.get(k)),
            Op::Peek(k) => {
                prop_assert_eq!(cache.peek(&k), model.pos(k).map(|i| model.entries[i].1))
            }
            Op::Contains(k) => prop_assert_eq!(cache.contains_key(&k), model.pos(k).is_some()),
            Op::Insert(k, v) => {
                cache.insert(k, v);
                model.insert(k, v);
            }
            Op::Remove(k) => prop_assert_eq!(cache.remove(&k), model.remove(k)),
            Op::LoadAll(ref keys, ref answers) => {
                // Each key given is looked up, in order; the misses are
                // asked of the loader, each once, and land in the order
                // asked.
                let mut values = HashMap::new();
                let mut missing = Vec::new();
                for &k in keys {
                    match model.get(k) {
                        Some(v) => drop(values.insert(k, Some(v))),
                        None if missing.contains(&k) => {}
                        None => missing.push(k),
                    }
                }
                let (asked, got) = load_all(&cache, keys, answers);
                prop_assert_eq!(&asked, &missing);
                for (&k, answer) in missing.iter().zip(answers) {
                    if let Some(v) = *answer {
                        model.insert(k, v);
                    }
                    values.insert(k, *answer);
                }
                let expected: Vec<Option<Val>> = keys.iter().map(|k| values[k]).collect();
                prop_assert_eq!(got, expected);
            }
            Op::Compute(k, act) => {
                let current = model.pos(k).map(|i| model.entries[i].1);
                let (found, out) = compute(&cache, k, act, None);
                prop_assert_eq!(found, current);
                let decided = act.apply(current.as_ref());
                let expected = match &decided {
                    Compute::Keep => Ok(computed(current, &decided)),
                    Compute::Remove => {
                        model.remove(k);
                        Ok(computed(current, &decided))
                    }
                    Compute::Put(v) | Compute::PutWith(v, _) => model
                        .compute_put(k, *v)
                        .map(|()| computed(current, &decided)),
                };
                prop_assert_eq!(out, expected);
            }
            Op::InvalidateAll => {
                cache.invalidate_all();
                let mut gone: Vec<_> = model.entries.drain(..).collect();
                gone.sort_by_key(|e| e.0);
                let mut logged: Vec<_> = log.lock().unwrap().drain(..).collect();
                let mut expected: Vec<_> = model.removed.drain(..).collect();
                expected.extend(
                    gone.into_iter()
                        .map(|(k, v, ..)| (k, v, RemovalCause::Explicit)),
                );
                // Invalidation order within a shard is unspecified: compare as sets.
                logged.sort();
                expected.sort();
                prop_assert_eq!(logged, expected);
            }
        }
        cache.validate();
        let order: Vec<u8> = cache.eviction_order().concat();
        let expected: Vec<u8> = model
            .entries
            .iter()
            .filter(|e| e.1 .1 != 0)
            .map(|e| e.0)
            .collect();
        prop_assert_eq!(order, expected);
        prop_assert_eq!(&*log.lock().unwrap(), &model.removed);
        prop_assert_eq!(cache.weighted_size(), model.weight());
        prop_assert_eq!(cache.len(), model.entries.len());
    }
    Ok(())
}

/// After a write of `v` under `k` that fits: readable at once, unless,
/// under W-TinyLfu and heavier than a unit, it lost its contest for room at
/// its own insert (the listener heard it last, as `Size`). `written` then
/// holds the key's last value, or not the key.
fn fitting_write(
    cache: &Cache<u8, Val>,
    log: &Log,
    eviction: Eviction,
    written: &mut HashMap<u8, Val>,
    k: u8,
    v: Val,
) -> Result<(), TestCaseError> {
    let turned_away = eviction == Eviction::TinyLfu
        && v.1 > 1
        && log.lock().unwrap().last() == Some(&(k, v, RemovalCause::Size));
    if turned_away {
        prop_assert_eq!(cache.peek(&k), None);
        written.remove(&k);
    } else {
        prop_assert_eq!(
            cache.peek(&k),
            Some(v),
            "a fitting write is readable at once"
        );
        written.insert(k, v);
    }
    Ok(())
}

fn sharded_semantics(eviction: Eviction, ops: Vec<Op>) -> Result<(), TestCaseError> {
    semantics(eviction, 40, 4, ops)
}

fn one_shard_semantics(eviction: Eviction, ops: Vec<Op>) -> Result<(), TestCaseError> {
    semantics(eviction, 12, 1, ops)
}

/// Whatever the policy: a fitting insert is readable at once (or, under
/// W-TinyLfu, heavier than a unit, evicted by its own insert, as the listener
/// hears last), reads return the last value written or nothing, removals
/// stick, the bound holds, invariants hold.
fn semantics(
    eviction: Eviction,
    capacity: u64,
    shards: u64,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let (cache, log) = build(eviction, capacity, shards as usize);
    // Last value written per key; a key may be missing from the cache (evicted).
    let mut written: HashMap<u8, Val> = HashMap::new();
    for op in ops {
        match op {
            Op::Get(k) | Op::Peek(k) => {
                let got = if matches!(op, Op::Get(_)) {
                    cache.get(&k)
                } else {
                    cache.peek(&k)
                };
                if let Some(v) = got {
                    prop_assert_eq!(Some(&v), written.get(&k));
                }
            }
            Op::Contains(k) => {
                if cache.contains_key(&k) {
                    prop_assert!(written.contains_key(&k));
                }
            }
            Op::Insert(k, v) => {
                log.lock().unwrap().clear();
                cache.insert(k, v);
                if u64::from(v.1) <= capacity / shards {
                    fitting_write(&cache, &log, eviction, &mut written, k, v)?;
                } else {
                    prop_assert_eq!(cache.peek(&k), None);
                    written.remove(&k);
                }
            }
            Op::LoadAll(ref keys, ref answers) => {
                let (asked, got) = load_all(&cache, keys, answers);
                for (k, v) in keys.iter().zip(&got) {
                    match asked.iter().position(|a| a == k) {
                        Some(j) => prop_assert_eq!(*v, answers[j]),
                        None => prop_assert_eq!(v.as_ref(), written.get(k), "a hit"),
                    }
                }
                for (&k, answer) in asked.iter().zip(answers) {
                    let cached = cache.peek(&k);
                    match answer {
                        // Cached unless too heavy, turned away or evicted
                        // by the landings after it.
                        Some(v) => match cached {
                            Some(c) => {
                                prop_assert_eq!(c, *v);
                                written.insert(k, *v);
                            }
                            None => drop(written.remove(&k)),
                        },
                        None => prop_assert_eq!(cached, None, "nothing found, nothing cached"),
                    }
                }
            }
            Op::Remove(k) => {
                let got = cache.remove(&k);
                let had = written.remove(&k);
                if got.is_some() {
                    prop_assert_eq!(got, had);
                }
                prop_assert_eq!(cache.peek(&k), None);
            }
            Op::InvalidateAll => {
                cache.invalidate_all();
                written.clear();
                prop_assert!(cache.is_empty());
            }
            Op::Compute(k, act) => {
                log.lock().unwrap().clear();
                let (found, out) = compute(&cache, k, act, None);
                if let Some(v) = found {
                    prop_assert_eq!(Some(&v), written.get(&k));
                }
                let decided = act.apply(found.as_ref());
                match decided {
                    Compute::Keep => {
                        prop_assert_eq!(out, Ok(computed(found, &decided)));
                        prop_assert_eq!(cache.peek(&k), found);
                    }
                    Compute::Remove => {
                        prop_assert_eq!(out, Ok(computed(found, &decided)));
                        written.remove(&k);
                        prop_assert_eq!(cache.peek(&k), None);
                    }
                    Compute::Put(v) | Compute::PutWith(v, _) => {
                        if u64::from(v.1) > capacity / shards {
                            prop_assert_eq!(out, Err(v));
                            prop_assert_eq!(cache.peek(&k), None);
                            written.remove(&k);
                        } else {
                            prop_assert_eq!(out, Ok(computed(found, &decided)));
                            fitting_write(&cache, &log, eviction, &mut written, k, v)?;
                        }
                    }
                }
            }
        }
        cache.validate();
        prop_assert!(cache.weighted_size() <= capacity);
    }
    // Every key written and not resident was told to the listener as removed.
    let resident: HashMap<u8, Val> = cache.iter().collect();
    for (k, v) in &resident {
        prop_assert_eq!(written.get(k), Some(v));
    }
    drop(log);
    Ok(())
}

/// Hashes alike in every cache (SipHash with fixed keys), so that two caches
/// fed the same operations make the same TinyLFU decisions.
type FixedHasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// How a cache in [`plain_and_general_writes_agree`] writes.
#[derive(Debug, Clone, Copy)]
enum Writes {
    /// `insert`: no deadline, no tag (the shard's short path).
    Plain,
    /// Every write tagged.
    Tagged,
    /// Every write with a time-to-live that never ends.
    Timed,
}

/// Writes that bring no deadline and no tag to a shard that keeps neither
/// take a shorter path than the others (`ShardWriter::insert_plain`). It
/// must decide exactly as the general one: a cache written plainly, one whose
/// every write carries a tag and one whose every write carries a time-to-live
/// (never reached) must agree after every step on what reads return, on the
/// eviction order, on the weight and on what their listeners heard.
fn plain_and_general_writes_agree(
    eviction: Eviction,
    capacity: u64,
    shards: usize,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let caches: Vec<(Writes, Cache<u8, Val, FixedHasher>, Log)> =
        [Writes::Plain, Writes::Tagged, Writes::Timed]
            .into_iter()
            .map(|writes| {
                let log = Log::default();
                let sink = log.clone();
                let cache = Cache::builder()
                    .max_capacity(capacity)
                    .shards(shards)
                    .eviction(eviction)
                    .hasher(FixedHasher::default())
                    .weigher(|_, v: &Val| v.1)
                    .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
                    .build()
                    .unwrap();
                (writes, cache, log)
            })
            .collect();
    for op in ops {
        let mut seen = Vec::new();
        for (writes, cache, log) in &caches {
            let mut bulk = None;
            let answer = match op {
                Op::Get(k) => cache.get(&k),
                Op::Peek(k) => cache.peek(&k),
                Op::Contains(k) => cache.contains_key(&k).then_some((0, 0)),
                Op::Insert(k, v) => {
                    match writes {
                        Writes::Plain => cache.insert(k, v),
                        Writes::Tagged => cache.insert_with(k, v, EntryOptions::new().tags(["t"])),
                        Writes::Timed => {
                            cache.insert_with(k, v, EntryOptions::new().ttl(Duration::MAX))
                        }
                    }
                    None
                }
                Op::Remove(k) => cache.remove(&k),
                Op::LoadAll(ref keys, ref answers) => {
                    bulk = Some(load_all(cache, keys, answers));
                    None
                }
                Op::InvalidateAll => {
                    cache.invalidate_all();
                    None
                }
                Op::Compute(k, act) => {
                    let options = match writes {
                        Writes::Plain => None,
                        Writes::Tagged => Some(EntryOptions::new().tags(["t"])),
                        Writes::Timed => Some(EntryOptions::new().ttl(Duration::MAX)),
                    };
                    let (found, out) = compute(cache, k, act, options);
                    match out {
                        Ok(Computed::Unchanged(v) | Computed::Inserted(v)) => Some(v),
                        Ok(Computed::Replaced(v) | Computed::Removed(v)) => Some(v),
                        Ok(Computed::Absent) => None,
                        Err(v) => found.or(Some(v)),
                    }
                }
            };
            cache.validate();
            let heard = std::mem::take(&mut *log.lock().unwrap());
            seen.push((
                answer,
                bulk,
                cache.eviction_order(),
                cache.weighted_size(),
                cache.len(),
                heard,
            ));
        }
        prop_assert_eq!(
            &seen[0],
            &seen[1],
            "plain against tagged writes, at {:?}",
            op
        );
        prop_assert_eq!(
            &seen[0],
            &seen[2],
            "plain against timed writes, at {:?}",
            op
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lru_one_shard_matches_model(ops in proptest::collection::vec(op(12, 4), 1..300), cap in 1u64..16) {
        exact_agreement(Eviction::Lru, cap, ops)?;
    }

    #[test]
    fn lfu_one_shard_matches_model(ops in proptest::collection::vec(op(12, 4), 1..300), cap in 1u64..16) {
        exact_agreement(Eviction::Lfu, cap, ops)?;
    }

    #[test]
    fn lru_unweighted_long_runs_match_model(ops in proptest::collection::vec(op(40, 1), 1..1000)) {
        // Many reads between writes: exercises read-buffer drains when it fills.
        exact_agreement(Eviction::Lru, 20, ops)?;
    }

    #[test]
    fn lfu_unweighted_long_runs_match_model(ops in proptest::collection::vec(op(40, 1), 1..1000)) {
        exact_agreement(Eviction::Lfu, 20, ops)?;
    }

    #[test]
    fn sharded_lru_keeps_semantics(ops in proptest::collection::vec(op(64, 12), 1..400)) {
        sharded_semantics(Eviction::Lru, ops)?;
    }

    #[test]
    fn sharded_tinylfu_keeps_semantics(ops in proptest::collection::vec(op(64, 12), 1..400)) {
        sharded_semantics(Eviction::TinyLfu, ops)?;
    }

    #[test]
    fn one_shard_tinylfu_keeps_semantics_and_invariants(ops in proptest::collection::vec(op(24, 3), 1..1500)) {
        // Long runs over few keys: fills the shard, starts the sketch, and runs
        // admission contests, promotions and demotions, validating each step.
        one_shard_semantics(Eviction::TinyLfu, ops)?;
    }

    #[test]
    fn sharded_lfu_keeps_semantics(ops in proptest::collection::vec(op(64, 12), 1..400)) {
        sharded_semantics(Eviction::Lfu, ops)?;
    }

    #[test]
    fn plain_writes_decide_as_general_ones(
        ops in proptest::collection::vec(op(32, 3), 1..800),
        eviction in prop_oneof![Just(Eviction::TinyLfu), Just(Eviction::Lru), Just(Eviction::Lfu)],
        cap in 1u64..24,
        shards in 1usize..=2,
    ) {
        // Long enough runs over few keys that TinyLFU's sketch starts and
        // its admission contests, promotions and demotions all run.
        prop_assume!(cap >= shards as u64);
        plain_and_general_writes_agree(eviction, cap, shards, ops)?;
    }
}

/// A key whose `Hash` panics while it is the thread's poisoned key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Touchy(u8);

thread_local! {
    static POISONED: std::cell::Cell<Option<u8>> = const { std::cell::Cell::new(None) };
}

impl std::hash::Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        assert!(
            POISONED.with(std::cell::Cell::get) != Some(self.0),
            "key {} hashes by panicking",
            self.0
        );
        self.0.hash(state);
    }
}

/// A write that fits runs a step of expiry after it is whole: a key's `Hash`
/// panicking in that step leaves the new entry counted and the shard valid.
#[test]
fn a_hash_panicking_in_a_writes_expiry_step_leaves_the_write_whole() {
    for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
        let (clock, time) = crate::Clock::mock();
        let cache: Cache<Touchy, u32> = Cache::builder()
            .max_capacity(100)
            .shards(1)
            .eviction(eviction)
            .time_to_live(Duration::from_secs(1))
            .clock(clock)
            .build()
            .unwrap();
        cache.insert(Touchy(1), 1);
        time.advance(Duration::from_secs(2));
        POISONED.with(|p| p.set(Some(1)));
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.insert(Touchy(2), 2)));
        POISONED.with(|p| p.set(None));
        assert!(outcome.is_err(), "the expiry step hashed key 1");
        cache.validate();
        assert_eq!(cache.get(&Touchy(2)), Some(2), "{eviction:?}");
        cache.run_pending_tasks();
        assert_eq!(cache.len(), 1, "{eviction:?}");
    }
}

/// Writes (plain, tagged, timed or loaded), removals and sweeps (a tag's
/// invalidation, a predicate's, the expiry of every timed entry), each made
/// with one key's `Hash` poisoned: whichever key's hashing panics (the
/// written one, or one that the call evicts, expires or invalidates), the
/// caller sees the panic, the shard stays whole (every timed entry still
/// filed for expiry, every tag still naming its carriers) and within its
/// capacity, a key read afterwards has the last value written to it, if any
/// write of it went through, and no key leaves without the listener hearing
/// of it.
fn panicking_hashes(
    eviction: Eviction,
    shards: usize,
    ops: Vec<(u8, u8, Val, u8)>,
) -> Result<(), TestCaseError> {
    let capacity = 24;
    let heard: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let (clock, time) = crate::Clock::mock();
    let cache: Cache<Touchy, Val, FixedHasher> = Cache::builder()
        .max_capacity(capacity)
        .clock(clock)
        .shards(shards)
        .eviction(eviction)
        .hasher(FixedHasher::default())
        .weigher(|_, v: &Val| v.1)
        .eviction_listener(move |k: Touchy, _, _| sink.lock().unwrap().push(k.0))
        .build()
        .unwrap();
    let resident = || -> Vec<u8> {
        (0..8u8)
            .filter(|&k| cache.peek(&Touchy(k)).is_some())
            .collect()
    };
    // The values a key may read as: every value written to it since its last
    // removal that went through, or whose write panicked (a panicking write
    // may or may not have landed; a later one supersedes it either way).
    let mut possible: HashMap<u8, Vec<Val>> = HashMap::new();
    for (kind, key, value, poisoned) in ops {
        let before = resident();
        POISONED.with(|p| p.set(Some(poisoned)));
        let k = Touchy(key);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
            0 => cache.insert(k, value),
            1 => cache.insert_with(k, value, EntryOptions::new().tags(["t"])),
            2 => cache.insert_with(k, value, EntryOptions::new().ttl(Duration::from_secs(3600))),
            3 => {
                cache.remove(&k);
            }
            4 => {
                cache.get_or_load(k, |_| value);
            }
            5 => cache.invalidate_tag("t"),
            6 => cache.invalidate_entries_if(|k, _| k.0 % 2 == key % 2),
            _ => {
                time.advance(Duration::from_secs(7200));
                cache.run_pending_tasks();
            }
        }));
        POISONED.with(|p| p.set(None));
        let went_through = outcome.is_ok();
        prop_assert!(went_through || poisoned == key || kind != 3);
        let values = possible.entry(key).or_default();
        match kind {
            3 if went_through => values.clear(),
            // A load writes only a key it did not find.
            4 if before.contains(&key) => {}
            // A removal or a sweep writes nothing.
            3 | 5..=7 => {}
            _ if went_through => *values = vec![value],
            _ => values.push(value),
        }
        cache.validate();
        prop_assert!(cache.weighted_size() <= capacity);
        // What expired is reclaimed by a pass that does not panic, stranded
        // nowhere (the count then holds just the readable keys).
        cache.run_pending_tasks();
        let after = resident();
        prop_assert_eq!(cache.len(), after.len());
        let heard = std::mem::take(&mut *heard.lock().unwrap());
        for k in before.iter().filter(|k| !after.contains(k)) {
            prop_assert!(heard.contains(k), "key {} left unheard", k);
        }
        for probe in 0..8u8 {
            if let Some(v) = cache.peek(&Touchy(probe)) {
                let allowed = possible.get(&probe).is_some_and(|vs| vs.contains(&v));
                prop_assert!(allowed, "key {} reads {:?}", probe, v);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn panicking_hashes_keep_the_cache_whole(
        ops in proptest::collection::vec((0u8..8, 0u8..8, (any::<u16>(), 0u32..=6), 0u8..10), 1..300),
        eviction in prop_oneof![Just(Eviction::TinyLfu), Just(Eviction::Lru), Just(Eviction::Lfu)],
        shards in 1usize..=2,
    ) {
        panicking_hashes(eviction, shards, ops)?;
    }
}
