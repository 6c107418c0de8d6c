//! Cache operations — tagged inserts and tag invalidations among them —
//! interleaved with clock moves against a model that knows every key's
//! deadline and tags. What reads see must agree exactly, under every policy,
//! with and without time-to-idle (the capacity is out of reach, or with
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
//! have been live and evicted by a write of another key, and the model drops
//! it, so that reads must still agree exactly. `AdvanceToDeadline` moves the
//! clock to a deadline exactly or to 1 ms before it: an entry is live before
//! its deadline and expired at it.
//!
//! With `custom`, lifetimes come from an `Expiry` instead of the fixed TTL
//! and TTI: its answers depend on the key and the write id, and on the
//! remaining lifetime it is given; they cover no deadline, zero (a write
//! refused as expired, a read that ends the entry), short and very long
//! lifetimes, keeping the current one and halving it (a read that brings a
//! deadline forward). The model computes the same answers and must agree.
//! With `weighted`, entries weigh 1 to 3 units, so a `small` cache evicts
//! by weight.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use larder::{Cache, Clock, EntryOptions, Eviction, Expiry, RemovalCause};
use libfuzzer_sys::fuzz_target;

const TTL: u64 = 3_000;
const TTI: u64 = 1_000;
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

struct Fuzzed;

impl Expiry<u8, u32> for Fuzzed {
    fn expire_after_create(&self, k: &u8, v: &u32) -> Option<Duration> {
        on_create(*k, *v).map(Duration::from_millis)
    }
    fn expire_after_update(&self, k: &u8, v: &u32, current: Option<Duration>) -> Option<Duration> {
        on_update(*k, *v, ms(current)).map(Duration::from_millis)
    }
    fn expire_after_read(&self, k: &u8, v: &u32, current: Option<Duration>) -> Option<Duration> {
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
    /// Moves the clock to a key's deadline exactly (with the `bool`, to 1 ms
    /// before it), so that reads at the boundary are common.
    AdvanceToDeadline(u8, bool),
    Maintain,
    InvalidateAll,
    InsertTagged(u8, u8),
    InvalidateTag(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    small: bool,
    policy: u8,
    shards: u8,
    tti: bool,
    custom: bool,
    weighted: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let eviction = match input.policy % 3 {
        0 => Eviction::Lru,
        1 => Eviction::Lfu,
        _ => Eviction::TinyLfu,
    };
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
        builder.expiry(Fuzzed)
    } else {
        builder.time_to_live(Duration::from_millis(TTL))
    };
    if input.weighted {
        // At most 3: a small cache's shards hold 4 units at least.
        builder = builder.weigher(|_, v: &u32| 1 + v % 3);
    }
    let heard: Arc<Mutex<Vec<(u8, u32, RemovalCause)>>> = Arc::default();
    let sink = Arc::clone(&heard);
    builder =
        builder.eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)));
    if tti {
        builder = builder.time_to_idle(Duration::from_millis(TTI));
    }
    let cache: Cache<u8, u32> = builder.build().unwrap();
    // key -> (value, deadline, cap), in ms; deadlines are exclusive. Values
    // are write ids, one per write.
    let mut model: HashMap<u8, (u32, u64, u64)> = HashMap::new();
    let mut writes = 0u32;
    let mut heard_total = 0usize;
    // key -> its tags (a bit per tag 0..4), for entries written with tags.
    let mut tags: HashMap<u8, u8> = HashMap::new();
    let mut now = 0u64;
    let live = |m: &HashMap<u8, (u32, u64, u64)>, k: u8, now: u64| {
        m.get(&k).copied().filter(|e| e.1 > now)
    };
    // A plain write's (deadline, cap), or `None` when it is refused as
    // already expired.
    let custom = input.custom;
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
            Some((if tti { cap.min(now + TTI) } else { cap }, cap))
        }
    };
    for op in input.ops.into_iter().take(2_000) {
        let before = model.clone();
        // The cause a live entry leaving in this step is heard with, and the
        // one key it may concern (`None`: any key).
        let mut cause: Option<(RemovalCause, Option<u8>)> = None;
        match op {
            Op::Get(k) => {
                let expected = live(&model, k, now);
                assert_eq!(cache.get(&k), expected.map(|e| e.0));
                if let (Some((v, at, cap)), true) = (expected, tti) {
                    // A read moves the deadline only by a tick (2^20 ns) or more.
                    let moved = cap.min(now + TTI);
                    if moved >= at + 2 {
                        model.insert(k, (v, moved, cap));
                    }
                }
                if let (Some((v, at, cap)), true) = (expected, custom) {
                    let current = (at != NEVER).then(|| at - now);
                    let moved = on_read(k, v, current).map_or(NEVER, |l| now + l).min(cap);
                    model.insert(k, (v, moved, cap));
                }
            }
            Op::Contains(k) => assert_eq!(cache.contains_key(&k), live(&model, k, now).is_some()),
            Op::InsertTagged(k, mask) => {
                writes += 1;
                let v = writes;
                cause = Some((RemovalCause::Replaced, Some(k)));
                let mask = mask % 16;
                let names: Vec<String> = (0..4)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| format!("t{i}"))
                    .collect();
                let deadlines = write(&model, k, v, now);
                cache.insert_with(k, v, EntryOptions::new().tags(names));
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
            Op::InvalidateTag(t) => {
                let t = t % 4;
                cause = Some((RemovalCause::Invalidated, None));
                cache.invalidate_tag(format!("t{t}"));
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
                writes += 1;
                let v = writes;
                cause = Some((RemovalCause::Replaced, Some(k)));
                tags.remove(&k);
                let deadlines = write(&model, k, v, now);
                cache.insert(k, v);
                match deadlines {
                    Some((at, cap)) => model.insert(k, (v, at, cap)),
                    None => model.remove(&k),
                };
            }
            Op::InsertTtl(k, ttl) => {
                writes += 1;
                let v = writes;
                cause = Some((RemovalCause::Replaced, Some(k)));
                tags.remove(&k);
                let ttl = long(ttl, 5_000, 24);
                cache.insert_with(k, v, EntryOptions::new().ttl(Duration::from_millis(ttl)));
                if ttl == 0 {
                    model.remove(&k);
                } else {
                    // With an `Expiry` the entry's own time-to-live is also
                    // the latest a read may move its deadline to.
                    let cap = now + ttl;
                    let at = if tti { cap.min(now + TTI) } else { cap };
                    model.insert(k, (v, at, cap));
                }
            }
            Op::Remove(k) => {
                cause = Some((RemovalCause::Explicit, Some(k)));
                assert_eq!(cache.remove(&k), live(&model, k, now).map(|e| e.0));
                model.remove(&k);
                tags.remove(&k);
            }
            Op::Advance(ms) => {
                let ms = long(ms, 2_000, 24).min(LATEST - now);
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
                cache.run_pending_tasks();
                model.retain(|_, e| e.1 > now);
                tags.retain(|k, _| model.contains_key(k));
                assert_eq!(cache.len(), model.len());
            }
            Op::InvalidateAll => {
                cause = Some((RemovalCause::Explicit, None));
                cache.invalidate_all();
                model.clear();
                tags.clear();
                assert!(cache.is_empty());
            }
        }
        cache.validate();
        let step_heard = std::mem::take(&mut *heard.lock().unwrap());
        heard_total += step_heard.len();
        assert_eq!(
            writes as usize,
            cache.len() + heard_total,
            "every write is resident or was heard of once"
        );
        for (k, v, heard_cause) in step_heard {
            // A write already expired (a zero time-to-live) is refused:
            // heard as expired, never in the model.
            let Some(&(_, at, _)) = before.get(&k).filter(|e| e.0 == v) else {
                assert_eq!(heard_cause, RemovalCause::Expired, "refused write {k} {v}");
                assert_eq!(v, writes, "only this step's write can be refused");
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
