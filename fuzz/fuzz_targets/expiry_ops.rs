//! Cache operations — tagged inserts and tag invalidations among them —
//! interleaved with clock moves against a model that knows every key's
//! deadline and tags. What reads see must agree exactly, under every policy,
//! with and without time-to-idle (one of 1 ms, 2 ms, 1 s, 2 s, 60 s and
//! about 116 days, so that a read moves a deadline by a whole millisecond
//! or only by a tick; the capacity is out of reach, or with
//! `small` the model learns of evictions from the listener, below);
//! `validate()` (wheel included) must hold after every step. The top of the
//! ranges of `InsertTtl` and `Advance` stands for time-to-lives and clock
//! jumps of up to about 2.9 years, so the cache's wheel files entries on every
//! level and past its top (about 2.3 years), and turns them over.
//!
//! Each write stores a fresh id as its value, and a listener hears every
//! entry that leaves: after each step every id written is resident (live, or
//! past its deadline and not yet reclaimed) or was heard exactly once; an
//! entry is heard as `Expired` exactly when the model's deadline for it had
//! passed, and otherwise with the cause of the step that removed it
//! (`Replaced` by a write of its key, `Explicit` by `remove` or
//! `invalidate_all`, `Invalidated` by its tag's invalidation). With `small`
//! the capacity is 16 entries, so writes evict: an entry heard as `Size` must
//! have been live and evicted by a write of another key, or, under
//! W-TinyLfu, be the step's own write heavier than a unit, turned away at
//! its insert (heavier than the admission window, it contests for room at
//! once); the model drops it, so that reads must still agree exactly. `AdvanceToDeadline` moves the
//! clock to a deadline exactly or to 1 ms before it: an entry is live before
//! its deadline and expired at it.
//!
//! `compute` must find exactly what `get` would (an entry past its deadline
//! is absent), keeping must move no deadline, and its puts and removals must
//! agree with `insert`, `insert_with` and `remove` in every respect above:
//! deadlines, the `Expiry`'s calls and panics, what the listener hears (an
//! entry past its deadline that a put or a removal takes out is heard as
//! `Expired`).
//!
//! `Load` runs a loading call (a loader that gives a fresh id, fails, or
//! finds nothing) and, with `refresh`, a `refresh_after` of 1 ms to just
//! under the time-to-live: a live entry written at least that long ago is
//! refreshed (the model knows when each value was written), so that the
//! call must return the new id, or the cached one when the loader fails, or
//! nothing, the entry removed, when it finds nothing; one not yet due is a
//! plain hit, its loader never run; one absent (or ended by the hit's own
//! read) is loaded as a miss. Its read and its write move deadlines, ask the
//! `Expiry` and panic with it as `get` and `insert` do.
//!
//! With `custom`, lifetimes come from an `Expiry` instead of the fixed TTL
//! and TTI: its answers depend on the key and the write id, and on the
//! remaining lifetime it is given; they cover no deadline, zero (a write
//! refused as expired, a read that ends the entry), short and very long
//! lifetimes, keeping the current one and halving it (a read that brings a
//! deadline forward). The model computes the same answers and must agree.
//! With `weighted`, entries weigh 0 to 3 units, so a `small` cache evicts
//! by weight, and entries of weight 0, never evicted, still expire, idle,
//! carry tags and answer the `Expiry` like any other.
//!
//! With `custom` and a `panics` byte, the `Expiry` also panics: each of its
//! methods that `panics` enables (bit 0 `expire_after_create`, 1
//! `expire_after_update`, 2 `expire_after_read`) on one call in four, picked
//! by the key, the write id and the lifetime left. The model knows which
//! method a call runs (create for a key with no live entry, update for one
//! with, read for a `get` that finds one) and with what, so the call must
//! panic exactly when that method does, with its panic, and no other call
//! may panic. A write that panicked did not happen: the cache is as it was
//! (an expired entry under the key stays until reclaimed), its id is never
//! resident nor heard, nothing is heard in its step, and the key keeps its
//! value, deadline and tags. A read that panicked moved no deadline: read
//! again later, with other time left, the entry must answer as the model's
//! unmoved deadline says. Reads and the listener must then still agree
//! exactly with the model.
#![no_main]

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use arbitrary::Arbitrary;
use larder::{Cache, Clock, EntryOptions, Eviction, Expiry, RemovalCause};
use larder::{Compute, Computed};
use libfuzzer_sys::fuzz_target;

const TTL: u64 = 3_000;
/// The time-to-idles `tti_len` picks from, in ms: below a tick, about one,
/// below the time-to-live (one whose reads move a deadline by any whole
/// millisecond, one whose by 2 ms or more), and above it (for entries with
/// a longer time-to-live of their own).
const TTIS: [u64; 6] = [1, 2, 1_000, 2_000, 60_000, 10_000_000_000];
/// The cache's clock tick, in ns.
const TICK_NANOS: u64 = 1 << 20;
/// `InsertTtl` and `Advance` values from here on are long (see `long`).
const LONG_FROM: u16 = 60_000;
/// The model's clock stays below this (ms, 250 years: the mock clock stops
/// at about 292).
const LATEST: u64 = 250 * 365 * 24 * 3_600_000;

/// A duration in ms: short ones as before (`n % short`), and `n - LONG_FROM`
/// shifted by `shift` at the top of the range.
fn long(n: u16, short: u64, shift: u32) -> u64 {
    match n.checked_sub(LONG_FROM) {
        Some(m) => u64::from(m) << shift,
        None => u64::from(n) % short,
    }
}

/// "No deadline" in the model.
const NEVER: u64 = u64::MAX;

/// A deterministic mix of a key, a write id and a salt.
fn pick(k: u8, v: u32, salt: u32) -> u32 {
    let x = (u32::from(k) << 24 ^ v ^ salt.wrapping_mul(0x9E37_79B9)).wrapping_mul(0x85EB_CA6B);
    (x ^ x >> 15).wrapping_mul(0xC2B2_AE35) >> 8
}

/// A lifetime in ms (`None`: no deadline) chosen by `x`.
fn lifetime(x: u32) -> Option<u64> {
    match x % 16 {
        0 | 1 => None,
        2 => Some(0),
        // About 2.2 years and up: the wheel's top levels.
        3 => Some((1 << 36) + u64::from(x % 1_000)),
        _ => Some(u64::from(x >> 4) % 5_000),
    }
}

/// The remaining lifetime in whole ms (the model's times are all whole ms).
fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| {
        assert_eq!(
            d.subsec_nanos() % 1_000_000,
            0,
            "a remaining lifetime of whole ms"
        );
        d.as_millis() as u64
    })
}

/// The answers the fuzzed `Expiry` gives, in ms, from the key, the write id
/// and the current remaining lifetime: `create` when there is none.
fn on_create(k: u8, v: u32) -> Option<u64> {
    lifetime(pick(k, v, 1))
}
fn on_update(k: u8, v: u32, current: Option<u64>) -> Option<u64> {
    match pick(k, v, 2) % 3 {
        0 => current,
        _ => lifetime(pick(k, v, 3)),
    }
}
fn on_read(k: u8, v: u32, current: Option<u64>) -> Option<u64> {
    match pick(k, v, 4) % 4 {
        0 => current,
        1 => current.map(|c| c / 2),
        // A read ends the entry only by halving a lifetime of 1 ms.
        _ => lifetime(pick(k, v, 5)).map(|l| l.max(1)),
    }
}

/// The `Expiry`'s methods, as bits of the `panics` byte.
const CREATE: u8 = 1;
const UPDATE: u8 = 2;
const READ: u8 = 4;

/// Whether the `Expiry`'s `method` panics on `(k, v)` with `current` ms of
/// lifetime left (`None` for create, or no deadline), as `panics` enables:
/// one call in four. Hanging on the lifetime left, an entry whose read
/// panicked may be read later, and its answer then shows whether the panic
/// moved the deadline.
fn fails(panics: u8, method: u8, k: u8, v: u32, current: Option<u64>) -> bool {
    let left = current
        .map_or(u32::MAX, |c| c as u32)
        .wrapping_mul(0x2545_F491);
    panics & method != 0 && pick(k, v ^ left, 6 + u32::from(method)) % 4 == 0
}

/// The payload of the `Expiry`'s deliberate panics.
struct Deliberate;

thread_local! {
    /// The `Expiry` methods that panicked, as bits.
    static PANICKED: Cell<u8> = const { Cell::new(0) };
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

/// Runs a call of the cache: `Err` when the `Expiry` panicked, with the
/// method that did (one: a second panic while unwinding would abort).
fn call<R>(f: impl FnOnce() -> R) -> Result<R, u8> {
    PANICKED.with(|p| p.set(0));
    let result = catch_unwind(AssertUnwindSafe(f));
    let panicked = PANICKED.with(Cell::get);
    match result {
        Ok(r) => {
            assert_eq!(panicked, 0, "the Expiry panicked, the call did not");
            Ok(r)
        }
        Err(panic) => {
            assert!(panic.is::<Deliberate>(), "only the Expiry panics");
            assert!(panicked.is_power_of_two(), "panicked in {panicked:#b}");
            Err(panicked)
        }
    }
}

struct Fuzzed {
    /// The methods that panic, as bits (see `fails`).
    panics: u8,
}

impl Fuzzed {
    fn check(&self, method: u8, k: u8, v: u32, current: Option<u64>) {
        if fails(self.panics, method, k, v, current) {
            PANICKED.with(|p| p.set(p.get() | method));
            std::panic::panic_any(Deliberate);
        }
    }
}

impl Expiry<u8, u32> for Fuzzed {
    fn expire_after_create(&self, k: &u8, v: &u32) -> Option<Duration> {
        self.check(CREATE, *k, *v, None);
        on_create(*k, *v).map(Duration::from_millis)
    }
    fn expire_after_update(&self, k: &u8, v: &u32, current: Option<Duration>) -> Option<Duration> {
        self.check(UPDATE, *k, *v, ms(current));
        on_update(*k, *v, ms(current)).map(Duration::from_millis)
    }
    fn expire_after_read(&self, k: &u8, v: &u32, current: Option<Duration>) -> Option<Duration> {
        self.check(READ, *k, *v, ms(current));
        on_read(*k, *v, ms(current)).map(Duration::from_millis)
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Get(u8),
    Contains(u8),
    Insert(u8),
    InsertTtl(u8, u16),
    Remove(u8),
    Advance(u16),
    /// Moves the clock by 1 ms: a read then moves a deadline by 1 ms at
    /// most, which a time-to-idle of 1 s does and one of 2 s does not.
    Nudge,
    /// Moves the clock to a key's deadline exactly (with the `bool`, to 1 ms
    /// before it), so that reads at the boundary are common.
    AdvanceToDeadline(u8, bool),
    Maintain,
    InvalidateAll,
    InsertTagged(u8, u8),
    InvalidateTag(u8),
    /// `compute` on a key, whose closure, by the byte mod 4, keeps what it
    /// finds, puts a fresh id (as `Insert`), puts one with its own
    /// time-to-live (as `InsertTtl`), or removes the entry (as `Remove`).
    Compute(u8, u8, u16),
    /// A loading call on a key, whose loader, by the byte mod 3, gives a
    /// fresh id (`get_or_load`), fails (`try_get_or_load`) or finds nothing
    /// (`optionally_get_or_load`): with `refresh`, a live entry written at
    /// least that long ago is reloaded.
    Load(u8, u8),
    /// `refresh` of a key whose loader gives a fresh id (`true`), or
    /// `try_refresh` with one that fails (`false`): whatever the entry's
    /// age, and without reading it.
    Refresh(u8, bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    small: bool,
    policy: u8,
    shards: u8,
    tti: bool,
    /// The time-to-idle, `TTIS[tti_len % 6]`.
    tti_len: u8,
    custom: bool,
    weighted: bool,
    /// With `custom`, the `Expiry` methods that panic (see `fails`).
    panics: u8,
    /// `refresh_after`, `REFRESH[refresh % 5]` ms, 0 for none.
    refresh: u8,
    ops: Vec<Op>,
}

/// The `refresh_after` intervals `refresh` picks from, in ms (0: none); all
/// below the time-to-live, as the builder requires.
const REFRESH: [u64; 5] = [0, 1, 2, 500, TTL - 1];

fuzz_target!(|input: Input| {
    let eviction = match input.policy % 3 {
        0 => Eviction::Lru,
        1 => Eviction::Lfu,
        _ => Eviction::TinyLfu,
    };
    allow_deliberate_panics();
    let (clock, time) = Clock::mock();
    let mut builder = Cache::builder()
        .max_capacity(if input.small { 16 } else { 4_096 })
        .shards(1 << (input.shards % 3))
        .eviction(eviction)
        .clock(clock);
    // `custom` and `tti` are exclusive: the builder refuses an `Expiry`
    // with a time-to-live or time-to-idle.
    let tti = input.tti && !input.custom;
    builder = if input.custom {
        builder.expiry(Fuzzed {
            panics: input.panics,
        })
    } else {
        builder.time_to_live(Duration::from_millis(TTL))
    };
    if input.weighted {
        // At most 3: a small cache's shards hold 4 units at least.
        builder = builder.weigher(|_, v: &u32| v % 4);
    }
    let heard: Arc<Mutex<Vec<(u8, u32, RemovalCause)>>> = Arc::default();
    let sink = Arc::clone(&heard);
    builder =
        builder.eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)));
    let refresh = REFRESH[usize::from(input.refresh) % REFRESH.len()];
    if refresh != 0 {
        builder = builder.refresh_after(Duration::from_millis(refresh));
    }
    let tti_ms = TTIS[usize::from(input.tti_len) % TTIS.len()];
    if tti {
        builder = builder.time_to_idle(Duration::from_millis(tti_ms));
    }
    // A read moves the deadline only by the less of a tick and 1/1024 of
    // the time-to-idle, or more.
    let least_move = TICK_NANOS.min((tti_ms * 1_000_000) >> 10);
    let cache: Cache<u8, u32> = builder.build().unwrap();
    // key -> (value, deadline, cap), in ms; deadlines are exclusive. Values
    // are write ids, one per write call; `writes` counts those that were not
    // undone by a panicking `Expiry`.
    let mut model: HashMap<u8, (u32, u64, u64)> = HashMap::new();
    let mut ids = 0u32;
    let mut writes = 0usize;
    let mut heard_total = 0usize;
    // key -> its tags (a bit per tag 0..4), for entries written with tags.
    let mut tags: HashMap<u8, u8> = HashMap::new();
    // key -> when its value was written, in ms.
    let mut written: HashMap<u8, u64> = HashMap::new();
    let mut now = 0u64;
    let live = |m: &HashMap<u8, (u32, u64, u64)>, k: u8, now: u64| {
        m.get(&k).copied().filter(|e| e.1 > now)
    };
    // A plain write's (deadline, cap), or `None` when it is refused as
    // already expired.
    let custom = input.custom;
    let panics = if custom { input.panics } else { 0 };
    // Whether a plain write of `(k, v)` panics: the `Expiry` method it runs
    // (update for a key with a live entry, else create), if that one panics.
    let panicking = |m: &HashMap<u8, (u32, u64, u64)>, k: u8, v: u32, now: u64| {
        let (method, current) = match live(m, k, now) {
            Some((_, at, _)) => (UPDATE, (at != NEVER).then(|| at - now)),
            None => (CREATE, None),
        };
        (custom && fails(panics, method, k, v, current)).then_some(method)
    };
    let write = |m: &HashMap<u8, (u32, u64, u64)>, k: u8, v: u32, now: u64| {
        if custom {
            let lifetime = match live(m, k, now) {
                Some((_, at, _)) => on_update(k, v, (at != NEVER).then(|| at - now)),
                None => on_create(k, v),
            };
            match lifetime {
                Some(0) => None,
                Some(l) => Some((now + l, NEVER)),
                None => Some((NEVER, NEVER)),
            }
        } else {
            let cap = now + TTL;
            Some((if tti { cap.min(now + tti_ms) } else { cap }, cap))
        }
    };
    // A read of the live entry `e` of `k` moves its deadline in the model
    // as the cache moves it (time-to-idle, or the `Expiry`'s answer).
    let read = |model: &mut HashMap<u8, (u32, u64, u64)>, k: u8, e: (u32, u64, u64), now: u64| {
        let (v, at, cap) = e;
        if tti {
            let moved = cap.min(now + tti_ms);
            if moved > at && (moved - at) * 1_000_000 >= least_move {
                model.insert(k, (v, moved, cap));
            }
        }
        if custom {
            let current = (at != NEVER).then(|| at - now);
            let moved = on_read(k, v, current).map_or(NEVER, |l| now + l).min(cap);
            model.insert(k, (v, moved, cap));
        }
    };
    for op in input.ops.into_iter().take(2_000) {
        let mut before = model.clone();
        // The cause a live entry leaving in this step is heard with, and the
        // one key it may concern (`None`: any key).
        let mut cause: Option<(RemovalCause, Option<u8>)> = None;
        // The step's call panicked in the `Expiry`: nothing may be heard.
        let mut refused = false;
        match op {
            Op::Get(k) => {
                let expected = live(&model, k, now);
                let got = call(|| cache.get(&k));
                match expected {
                    // The read panics and moves no deadline: the model
                    // stays as it is.
                    Some((v, at, _))
                        if custom && fails(panics, READ, k, v, (at != NEVER).then(|| at - now)) =>
                    {
                        assert_eq!(got, Err(READ), "the read of {k} ({v}) panics");
                        refused = true;
                    }
                    _ => {
                        assert_eq!(got, Ok(expected.map(|e| e.0)));
                        if let Some(e) = expected {
                            read(&mut model, k, e, now);
                        }
                    }
                }
            }
            Op::Load(k, mode) => 'load: {
                let expected = live(&model, k, now);
                let due = |written: Option<&u64>| {
                    refresh != 0 && written.is_some_and(|&w| now - w >= refresh)
                };
                if let Some((v, at, _)) = expected {
                    if custom && fails(panics, READ, k, v, (at != NEVER).then(|| at - now)) {
                        // The hit's read panics: nothing loads.
                        let got = call(|| cache.get_or_load(k, |_| unreachable!("panicked")));
                        assert_eq!(got, Err(READ), "the read of {k} ({v}) panics");
                        refused = true;
                        break 'load;
                    }
                    if !due(written.get(&k)) {
                        let got = match mode % 3 {
                            0 => call(|| cache.get_or_load(k, |_| unreachable!("fresh"))),
                            1 => call(|| cache.try_get_or_load(k, |_| Err::<u32, _>(())))
                                .map(|r| r.unwrap()),
                            _ => call(|| cache.optionally_get_or_load(k, |_| None))
                                .map(|r| r.unwrap()),
                        };
                        assert_eq!(got, Ok(v), "a hit on {k} not due");
                        read(&mut model, k, expected.unwrap(), now);
                        break 'load;
                    }
                    read(&mut model, k, expected.unwrap(), now);
                    // The load's write hears the entry as its read left it:
                    // expired, should the read have ended it.
                    before.insert(k, model[&k]);
                }
                // Due (a refresh) if still live after its read; else a miss.
                let refreshing = expected.is_some() && live(&model, k, now).is_some();
                let old = expected.map(|e| e.0);
                match mode % 3 {
                    0 => {
                        ids += 1;
                        let v = ids;
                        let panicking = panicking(&model, k, v, now);
                        let deadlines = write(&model, k, v, now);
                        let got = call(|| cache.get_or_load(k, |_| v));
                        if let Some(method) = panicking {
                            assert_eq!(got, Err(method), "the load of {k} ({v}) panics");
                            refused = true;
                        } else {
                            assert_eq!(got, Ok(v), "the load of {k}");
                            writes += 1;
                            cause = Some((RemovalCause::Replaced, Some(k)));
                            tags.remove(&k);
                            match deadlines {
                                Some((at, cap)) => model.insert(k, (v, at, cap)),
                                None => model.remove(&k),
                            };
                        }
                    }
                    1 => {
                        let got = call(|| cache.try_get_or_load(k, |_| Err::<u32, _>(())));
                        let got = got.map(|r| r.map_err(|_| ()));
                        let want = if refreshing {
                            Ok(old.unwrap())
                        } else {
                            Err(())
                        };
                        assert_eq!(got, Ok(want), "a failing load of {k}");
                    }
                    _ => {
                        let got = call(|| cache.optionally_get_or_load(k, |_| None));
                        assert_eq!(got, Ok(None), "a load of {k} finding nothing");
                        if refreshing {
                            cause = Some((RemovalCause::Explicit, Some(k)));
                            model.remove(&k);
                            tags.remove(&k);
                        }
                    }
                }
            }
            Op::Refresh(k, true) => {
                ids += 1;
                let v = ids;
                let panicking = panicking(&model, k, v, now);
                let deadlines = write(&model, k, v, now);
                let got = call(|| cache.refresh(k, |_| v));
                if let Some(method) = panicking {
                    assert_eq!(got, Err(method), "the refresh of {k} ({v}) panics");
                    refused = true;
                } else {
                    assert_eq!(got, Ok(v), "the refresh of {k}");
                    writes += 1;
                    cause = Some((RemovalCause::Replaced, Some(k)));
                    tags.remove(&k);
                    match deadlines {
                        Some((at, cap)) => model.insert(k, (v, at, cap)),
                        None => model.remove(&k),
                    };
                }
            }
            Op::Refresh(k, false) => {
                let got = call(|| cache.try_refresh(k, |_| Err::<u32, _>(())));
                let got = got.map(|r| r.map_err(|_| ()));
                assert_eq!(got, Ok(Err(())), "a failing refresh of {k}");
            }
            Op::Contains(k) => assert_eq!(
                call(|| cache.contains_key(&k)),
                Ok(live(&model, k, now).is_some())
            ),
            Op::InsertTagged(k, mask) => {
                ids += 1;
                let v = ids;
                let mask = mask % 16;
                let names: Vec<String> = (0..4)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| format!("t{i}"))
                    .collect();
                let panicking = panicking(&model, k, v, now);
                let deadlines = write(&model, k, v, now);
                let wrote = call(|| cache.insert_with(k, v, EntryOptions::new().tags(names)));
                if let Some(method) = panicking {
                    // Not written: the key keeps its value, deadline and tags.
                    assert_eq!(wrote, Err(method), "the write of {k} ({v}) panics");
                    refused = true;
                } else {
                    assert_eq!(wrote, Ok(()));
                    writes += 1;
                    cause = Some((RemovalCause::Replaced, Some(k)));
                    match deadlines {
                        Some((at, cap)) => {
                            model.insert(k, (v, at, cap));
                            tags.insert(k, mask);
                        }
                        None => {
                            model.remove(&k);
                            tags.remove(&k);
                        }
                    }
                }
            }
            Op::InvalidateTag(t) => {
                let t = t % 4;
                cause = Some((RemovalCause::Invalidated, None));
                assert_eq!(call(|| cache.invalidate_tag(format!("t{t}"))), Ok(()));
                let doomed: Vec<u8> = tags
                    .iter()
                    .filter(|&(_, m)| m & (1 << t) != 0)
                    .map(|(&k, _)| k)
                    .collect();
                for k in doomed {
                    model.remove(&k);
                    tags.remove(&k);
                }
            }
            Op::Insert(k) => {
                ids += 1;
                let v = ids;
                let panicking = panicking(&model, k, v, now);
                let deadlines = write(&model, k, v, now);
                let wrote = call(|| cache.insert(k, v));
                if let Some(method) = panicking {
                    assert_eq!(wrote, Err(method), "the write of {k} ({v}) panics");
                    refused = true;
                } else {
                    assert_eq!(wrote, Ok(()));
                    writes += 1;
                    cause = Some((RemovalCause::Replaced, Some(k)));
                    tags.remove(&k);
                    match deadlines {
                        Some((at, cap)) => model.insert(k, (v, at, cap)),
                        None => model.remove(&k),
                    };
                }
            }
            Op::InsertTtl(k, ttl) => {
                ids += 1;
                writes += 1;
                let v = ids;
                cause = Some((RemovalCause::Replaced, Some(k)));
                tags.remove(&k);
                let ttl = long(ttl, 5_000, 24);
                // Its own time-to-live: the `Expiry` is not asked.
                let wrote = call(|| {
                    cache.insert_with(k, v, EntryOptions::new().ttl(Duration::from_millis(ttl)))
                });
                assert_eq!(wrote, Ok(()));
                if ttl == 0 {
                    model.remove(&k);
                } else {
                    // With an `Expiry` the entry's own time-to-live is also
                    // the latest a read may move its deadline to.
                    let cap = now + ttl;
                    let at = if tti { cap.min(now + tti_ms) } else { cap };
                    model.insert(k, (v, at, cap));
                }
            }
            Op::Compute(k, mode, ttl) => {
                // What the closure must find: the live entry's id, as `get`
                // would return it (and, unlike `get`, moving no deadline).
                let seen = live(&model, k, now).map(|e| e.0);
                let mut found = None;
                let mut run = |put: Compute<u32>| {
                    call(|| {
                        cache.compute(k, |v| {
                            found = Some(v.copied());
                            put
                        })
                    })
                };
                let written = |v| match seen {
                    Some(_) => Ok(Computed::Replaced(v)),
                    None => Ok(Computed::Inserted(v)),
                };
                match mode % 4 {
                    0 => {
                        let out = run(Compute::Keep);
                        assert_eq!(
                            out,
                            Ok(Ok(seen.map_or(Computed::Absent, Computed::Unchanged)))
                        );
                    }
                    1 => {
                        ids += 1;
                        let v = ids;
                        let panicking = panicking(&model, k, v, now);
                        let deadlines = write(&model, k, v, now);
                        let wrote = run(Compute::Put(v));
                        if let Some(method) = panicking {
                            assert_eq!(wrote, Err(method), "the compute of {k} ({v}) panics");
                            refused = true;
                        } else {
                            assert_eq!(wrote, Ok(written(v)));
                            writes += 1;
                            cause = Some((RemovalCause::Replaced, Some(k)));
                            tags.remove(&k);
                            match deadlines {
                                Some((at, cap)) => model.insert(k, (v, at, cap)),
                                None => model.remove(&k),
                            };
                        }
                    }
                    2 => {
                        ids += 1;
                        writes += 1;
                        let v = ids;
                        cause = Some((RemovalCause::Replaced, Some(k)));
                        tags.remove(&k);
                        let ttl = long(ttl, 5_000, 24);
                        let options = EntryOptions::new().ttl(Duration::from_millis(ttl));
                        assert_eq!(run(Compute::PutWith(v, options)), Ok(written(v)));
                        if ttl == 0 {
                            model.remove(&k);
                        } else {
                            let cap = now + ttl;
                            let at = if tti { cap.min(now + tti_ms) } else { cap };
                            model.insert(k, (v, at, cap));
                        }
                    }
                    _ => {
                        cause = Some((RemovalCause::Explicit, Some(k)));
                        let out = run(Compute::Remove);
                        assert_eq!(
                            out,
                            Ok(Ok(seen.map_or(Computed::Absent, Computed::Removed)))
                        );
                        model.remove(&k);
                        tags.remove(&k);
                    }
                }
                assert_eq!(found, Some(seen), "the closure finds what get would");
            }
            Op::Remove(k) => {
                cause = Some((RemovalCause::Explicit, Some(k)));
                assert_eq!(
                    call(|| cache.remove(&k)),
                    Ok(live(&model, k, now).map(|e| e.0))
                );
                model.remove(&k);
                tags.remove(&k);
            }
            Op::Advance(_) | Op::Nudge => {
                let ms = match op {
                    Op::Advance(ms) => long(ms, 2_000, 24),
                    _ => 1,
                }
                .min(LATEST - now);
                time.advance(Duration::from_millis(ms));
                now += ms;
            }
            Op::AdvanceToDeadline(k, early) => {
                if let Some(&(_, at, _)) = model.get(&k) {
                    let to = if early { at.saturating_sub(1) } else { at };
                    if to > now && to <= LATEST {
                        time.advance(Duration::from_millis(to - now));
                        now = to;
                    }
                }
            }
            Op::Maintain => {
                assert_eq!(call(|| cache.run_pending_tasks()), Ok(()));
                model.retain(|_, e| e.1 > now);
                tags.retain(|k, _| model.contains_key(k));
                assert_eq!(cache.len(), model.len());
            }
            Op::InvalidateAll => {
                cause = Some((RemovalCause::Explicit, None));
                assert_eq!(call(|| cache.invalidate_all()), Ok(()));
                model.clear();
                tags.clear();
                assert!(cache.is_empty());
            }
        }
        // Every write stores a fresh id: a value that changed was written now.
        for (&k, e) in &model {
            if before.get(&k).is_none_or(|b| b.0 != e.0) {
                written.insert(k, now);
            }
        }
        cache.validate();
        let step_heard = std::mem::take(&mut *heard.lock().unwrap());
        heard_total += step_heard.len();
        assert_eq!(
            writes,
            cache.len() + heard_total,
            "every write is resident or was heard of once"
        );
        assert!(
            !refused || step_heard.is_empty(),
            "a call that panicked in the Expiry was heard: {step_heard:?}"
        );
        for (k, v, heard_cause) in step_heard {
            // A write already expired (a zero time-to-live) is refused:
            // heard as expired, never in the model.
            let Some(&(_, at, _)) = before.get(&k).filter(|e| e.0 == v) else {
                if heard_cause == RemovalCause::Size && v == ids {
                    // Under W-TinyLfu a write heavier than a unit (than
                    // the window) may lose its contest for room at its own
                    // insert.
                    assert!(
                        input.small && input.weighted && eviction == Eviction::TinyLfu && v % 4 > 1,
                        "write {k} {v} evicted by its own insert"
                    );
                    if model.get(&k).is_some_and(|e| e.0 == v) {
                        model.remove(&k);
                        tags.remove(&k);
                    }
                    continue;
                }
                assert_eq!(heard_cause, RemovalCause::Expired, "refused write {k} {v}");
                assert_eq!(v, ids, "only this step's write can be refused");
                continue;
            };
            if at <= now {
                assert_eq!(
                    heard_cause,
                    RemovalCause::Expired,
                    "expired {k} heard as {heard_cause:?}"
                );
            } else if heard_cause == RemovalCause::Size {
                assert!(input.small, "{k} evicted below capacity");
                assert!(
                    matches!(cause, Some((RemovalCause::Replaced, Some(w))) if w != k),
                    "{k} evicted by a step that writes no other key"
                );
                model.remove(&k);
                tags.remove(&k);
            } else {
                let (expected, key) = cause.expect("a live entry left in a step that removes none");
                assert_eq!(heard_cause, expected, "live {k} heard as {heard_cause:?}");
                assert!(
                    key.is_none_or(|key| key == k),
                    "live {k} left for another key"
                );
            }
        }
        let mut seen: Vec<(u8, u32)> = cache.iter().collect();
        seen.sort_unstable();
        let mut expected: Vec<(u8, u32)> = model
            .iter()
            .filter(|(_, e)| e.1 > now)
            .map(|(&k, e)| (k, e.0))
            .collect();
        expected.sort_unstable();
        assert_eq!(seen, expected, "iter shows exactly the live entries");
    }
});
