//! Operation sequences against a naive model. The cache has 1, 2 or 4 shards
//! and a fixed hasher, so the model knows each key's shard and each shard's
//! share of the capacity (and the heaviest entry a shard takes, the smallest
//! share). Each shard's resident set must equal an exact `Vec` LRU's (or
//! LFU's) after every step; for W-TinyLFU,
//! whose admission the model does not replay, every read must return the last
//! value written or nothing, and a fitting insert must be readable at once.
//! `validate()` checks the store's invariants (table, slab, policy regions and
//! weights agree) after every step. Every entry written is, after each step,
//! either resident or handed to the listener exactly once; for LRU and LFU the
//! listener hears exactly the entries and causes the model removed. With a
//! `policy` byte of 128 or more the listener panics on every value divisible
//! by 4: the call that removed it panics, and only then, and the cache still
//! agrees with the model. `try_insert` hands a too-heavy entry back instead
//! of to the listener (unless the listener panicked on the value it
//! replaced: it then hears of the entry as `Size`); a `get_or_load` miss writes what it loaded as an insert
//! would, a hit reads as `get`; `invalidate_entries_if` removes exactly the
//! entries its predicate picks, heard as `Invalidated`. `get_or_load_async`
//! (polled to completion here: its load is ready at once) must behave as
//! `get_or_load`.
#![no_main]

use arbitrary::Arbitrary;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};

use larder::{Cache, Eviction, RemovalCause};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Get(u8),
    Peek(u8),
    Insert(u8, u8, u8),
    /// `try_insert`: a value too heavy for the cache comes back to the caller.
    TryInsert(u8, u8, u8),
    /// `get_or_load` with a loader yielding `(value, weight)`; with the
    /// `bool`, `get_or_load_async`.
    GetOrLoad(u8, u8, u8, bool),
    Remove(u8),
    /// `invalidate_entries_if` on `(key + value) % (m % 5 + 2) == 0`.
    InvalidateIf(u8),
    InvalidateAll,
}

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    capacity: u8,
    shards: u8,
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
    /// Evicts in order until the weight is within `limit`; returns the
    /// entries evicted, as the listener hears of them.
    fn evict(&mut self, limit: u64, keep: Option<u8>, out: &mut Vec<Removal>) {
        while self.weight() > limit {
            match self.entries.iter().position(|e| Some(e.0) != keep) {
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
}

/// (key, value, cause) as the listener hears of an entry leaving.
type Removal = (u8, u8, RemovalCause);

/// The payload of the listener's deliberate panics.
struct Deliberate;

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

/// Runs a call that may reach the listener: `Err` when the listener panicked.
fn listened<R>(f: impl FnOnce() -> R) -> Result<R, ()> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        assert!(panic.is::<Deliberate>(), "only the listener panics");
    })
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
    let panics = input.policy >= 128;
    let triggers = move |v: u8| panics && v % 4 == 0;
    let mut written: std::collections::HashMap<u8, u8> = Default::default();
    let heard: Arc<Mutex<Vec<Removal>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let cache: Cache<u8, (u8, u8), FixedState> = Cache::builder()
        .max_capacity(capacity)
        .shards(shards as usize)
        .hasher(FixedState)
        .eviction(eviction)
        .weigher(|_, v: &(u8, u8)| u32::from(v.1 % 16))
        .eviction_listener(move |k, v: (u8, u8), cause| {
            sink.lock().unwrap().push((k, v.0, cause));
            if triggers(v.0) {
                std::panic::panic_any(Deliberate);
            }
        })
        .build()
        .unwrap();
    let shard_of = |k: u8| cache.shard_index(&k);
    // Entries written (each insert makes one), and every removal heard so far.
    let mut inserts = 0usize;
    let mut heard_total = 0usize;
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
        let mut expected_heard: Vec<Removal> = Vec::new();
        let mut panicked = false;
        match op {
            Op::Get(k) => {
                let got = cache.get(&k).map(|(v, w)| (v, w % 16));
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
            Op::Peek(k) => {
                let got = cache.peek(&k).map(|v| v.0);
                if exact {
                    let model = &models[shard_of(k)];
                    assert_eq!(got, model.pos(k).map(|i| model.entries[i].1));
                } else if let Some(v) = got {
                    assert_eq!(Some(&v), written.get(&k));
                }
            }
            Op::Insert(k, v, w) => {
                panicked = listened(|| cache.insert(k, (v, w))).is_err();
                inserts += 1;
                expected_heard = models[shard_of(k)].insert(k, v, u64::from(w % 16));
                if u64::from(w % 16) <= base {
                    written.insert(k, v);
                    assert_eq!(
                        cache.peek(&k).map(|v| v.0),
                        Some(v),
                        "a fitting insert is readable"
                    );
                } else {
                    written.remove(&k);
                    assert_eq!(cache.peek(&k), None);
                }
            }
            Op::TryInsert(k, v, w) => {
                let result = listened(|| cache.try_insert(k, (v, w)));
                let too_heavy = u64::from(w % 16) > base;
                expected_heard = models[shard_of(k)].insert(k, v, u64::from(w % 16));
                if too_heavy {
                    // Handed back, never heard of, never resident; or, when
                    // the listener panicked on the value it replaced, heard
                    // of as `Size` after all (the panic cannot carry it back).
                    if result.is_ok() {
                        expected_heard.retain(|e| e.2 != RemovalCause::Size);
                    } else {
                        inserts += 1;
                    }
                    written.remove(&k);
                    assert_eq!(cache.peek(&k), None);
                } else {
                    inserts += 1;
                    written.insert(k, v);
                    assert_eq!(cache.peek(&k).map(|v| v.0), Some(v));
                }
                match result {
                    Ok(Ok(())) => assert!(!too_heavy, "a too-heavy entry was accepted"),
                    Ok(Err(rejected)) => {
                        assert!(too_heavy, "a fitting entry was rejected");
                        assert_eq!((rejected.key, rejected.value), (k, (v, w)));
                        assert_eq!(rejected.weight, u32::from(w % 16));
                        assert_eq!(rejected.limit, base);
                    }
                    Err(()) => panicked = true,
                }
            }
            Op::GetOrLoad(k, v, w, asynchronous) => {
                let model = &mut models[shard_of(k)];
                let resident = if exact {
                    model.pos(k).is_some()
                } else {
                    cache.peek(&k).is_some()
                };
                let mut loaded = false;
                let got = listened(|| {
                    if asynchronous {
                        block_on(cache.get_or_load_async(k, async {
                            loaded = true;
                            (v, w)
                        }))
                    } else {
                        cache.get_or_load(k, |_| {
                            loaded = true;
                            (v, w)
                        })
                    }
                });
                assert_eq!(loaded, !resident, "the loader runs exactly on a miss");
                if resident {
                    let got = got.expect("a hit reaches no listener").0;
                    if exact {
                        let i = model.pos(k).expect("resident");
                        assert_eq!(got, model.entries[i].1);
                        model.touch(i);
                    } else {
                        assert_eq!(Some(&got), written.get(&k));
                    }
                } else {
                    match got {
                        Ok(got) => assert_eq!(got, (v, w), "the caller gets what it loaded"),
                        Err(()) => panicked = true,
                    }
                    inserts += 1;
                    expected_heard = model.insert(k, v, u64::from(w % 16));
                    if u64::from(w % 16) <= base {
                        written.insert(k, v);
                        assert_eq!(cache.peek(&k).map(|v| v.0), Some(v));
                    } else {
                        written.remove(&k);
                        assert_eq!(cache.peek(&k), None);
                    }
                }
            }
            Op::InvalidateIf(m) => {
                let picks =
                    move |k: u8, v: u8| (u32::from(k) + u32::from(v)) % u32::from(m % 5 + 2) == 0;
                panicked = listened(|| cache.invalidate_entries_if(|k, v| picks(*k, v.0))).is_err();
                for model in &mut models {
                    let (gone, kept): (Vec<_>, Vec<_>) =
                        model.entries.drain(..).partition(|e| picks(e.0, e.1));
                    model.entries = kept;
                    expected_heard
                        .extend(gone.iter().map(|e| (e.0, e.1, RemovalCause::Invalidated)));
                }
                written.retain(|&k, &mut v| !picks(k, v));
                assert!(
                    cache.iter().all(|(k, v)| !picks(k, v.0)),
                    "a picked entry stayed"
                );
            }
            Op::Remove(k) => {
                let got = listened(|| cache.remove(&k).map(|v| v.0));
                let model = &mut models[shard_of(k)];
                let expected = model.pos(k).map(|i| model.entries.remove(i).1);
                expected_heard.extend(expected.map(|v| (k, v, RemovalCause::Explicit)));
                match got {
                    Ok(got) if exact => assert_eq!(got, expected),
                    Ok(Some(v)) => assert_eq!(Some(&v), written.get(&k)),
                    Ok(None) => {}
                    // The value was removed; the listener's panic took the
                    // place of its return.
                    Err(()) => panicked = true,
                }
                written.remove(&k);
                assert_eq!(cache.peek(&k), None);
            }
            Op::InvalidateAll => {
                panicked = listened(|| cache.invalidate_all()).is_err();
                for model in &mut models {
                    expected_heard.extend(
                        model
                            .entries
                            .drain(..)
                            .map(|e| (e.0, e.1, RemovalCause::Explicit)),
                    );
                }
                written.clear();
                assert!(cache.is_empty());
            }
        }
        cache.validate();
        assert!(cache.weighted_size() <= capacity);
        let mut step_heard = std::mem::take(&mut *heard.lock().unwrap());
        heard_total += step_heard.len();
        assert_eq!(
            panicked,
            step_heard.iter().any(|e| triggers(e.1)),
            "a call panics exactly when the listener did"
        );
        assert_eq!(
            inserts,
            cache.len() + heard_total,
            "every entry written is resident or was heard of once"
        );
        if exact {
            step_heard.sort_unstable();
            expected_heard.sort_unstable();
            assert_eq!(step_heard, expected_heard, "the listener hears what left");
            let mut resident: Vec<(u8, u8)> = cache.iter().map(|(k, v)| (k, v.0)).collect();
            resident.sort_unstable();
            let mut expected: Vec<(u8, u8)> = models
                .iter()
                .flat_map(|m| m.entries.iter().map(|e| (e.0, e.1)))
                .collect();
            expected.sort_unstable();
            assert_eq!(resident, expected);
            let weight: u64 = models.iter().map(Model::weight).sum();
            assert_eq!(cache.weighted_size(), weight);
        }
    }
});
