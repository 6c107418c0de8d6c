//! Cache operations interleaved with clock moves, against a model that knows
//! each key's deadline: with a capacity no sequence can fill, what a read sees
//! must agree exactly, and `validate` (the wheel included) must hold after
//! every step, for every policy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use crate::{Cache, Clock, EntryOptions, Eviction, RemovalCause};

const TTL: u64 = 3_000; // ms
const TTI: u64 = 1_000; // ms

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Contains(u8),
    Insert(u8, u16),
    /// Per-entry time-to-live in milliseconds (0: do not cache).
    InsertTtl(u8, u16, u64),
    Remove(u8),
    Advance(u64),
    Maintain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..16).prop_map(Op::Get),
        1 => (0u8..16).prop_map(Op::Contains),
        3 => (0u8..16, any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (0u8..16, any::<u16>(), prop_oneof![Just(0u64), 1u64..5_000]).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        1 => (0u8..16).prop_map(Op::Remove),
        3 => prop_oneof![0u64..5, 0u64..1_500, Just(TTI), Just(TTL)].prop_map(Op::Advance),
        1 => Just(Op::Maintain),
    ]
}

/// key → (value, deadline, cap) in ms; deadlines are exclusive.
#[derive(Default)]
struct Model {
    entries: HashMap<u8, (u16, u64, u64)>,
    now: u64,
}

impl Model {
    fn live(&self, k: u8) -> Option<(u16, u64, u64)> {
        self.entries.get(&k).copied().filter(|e| e.1 > self.now)
    }
}

fn agree(eviction: Eviction, tti: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (clock, time) = Clock::mock();
    let log: Arc<Mutex<Vec<(u8, u16, RemovalCause)>>> = Arc::default();
    let sink = log.clone();
    let mut builder = Cache::builder()
        .max_capacity(1_000)
        .shards(2)
        .eviction(eviction)
        .time_to_live(Duration::from_millis(TTL))
        .clock(clock)
        .eviction_listener(move |k, v, c| sink.lock().unwrap().push((k, v, c)));
    if tti {
        builder = builder.time_to_idle(Duration::from_millis(TTI));
    }
    let cache: Cache<u8, u16> = builder.build().unwrap();
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Get(k) => {
                let expected = model.live(k);
                prop_assert_eq!(cache.get(&k), expected.map(|e| e.0));
                if let (Some((v, at, cap)), true) = (expected, tti) {
                    // Moved only by a tick (2^20 ns) or 1/1024 of the
                    // time-to-idle, whichever is less, or more.
                    let moved = cap.min(model.now + TTI);
                    let least = (1u64 << 20).min((TTI * 1_000_000) >> 10);
                    if moved > at && (moved - at) * 1_000_000 >= least {
                        model.entries.insert(k, (v, moved, cap));
                    }
                }
            }
            Op::Contains(k) => prop_assert_eq!(cache.contains_key(&k), model.live(k).is_some()),
            Op::Insert(k, v) | Op::InsertTtl(k, v, _) => {
                let ttl = match op {
                    Op::InsertTtl(_, _, t) => {
                        cache.insert_with(k, v, EntryOptions::new().ttl(Duration::from_millis(t)));
                        t
                    }
                    _ => {
                        cache.insert(k, v);
                        TTL
                    }
                };
                let cap = model.now + ttl;
                let at = if tti { cap.min(model.now + TTI) } else { cap };
                if ttl == 0 {
                    model.entries.remove(&k);
                } else {
                    model.entries.insert(k, (v, at, cap));
                }
            }
            Op::Remove(k) => {
                let expected = model.live(k).map(|e| e.0);
                prop_assert_eq!(cache.remove(&k), expected);
                model.entries.remove(&k);
            }
            Op::Advance(ms) => {
                time.advance(Duration::from_millis(ms));
                model.now += ms;
            }
            Op::Maintain => {
                cache.run_pending_tasks();
                model.entries.retain(|_, e| e.1 > model.now);
                prop_assert_eq!(cache.len(), model.entries.len());
            }
        }
        cache.validate();
        prop_assert!(cache.len() >= model.entries.values().filter(|e| e.1 > model.now).count());
    }
    // Everything the listener saw as expired was indeed past its deadline by
    // then, and nothing was evicted for size.
    prop_assert!(log
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.2 != RemovalCause::Size));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn ttl_matches_model_under_every_policy(ops in proptest::collection::vec(op(), 1..300)) {
        for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
            agree(eviction, false, ops.clone())?;
        }
    }

    #[test]
    fn ttl_and_tti_match_model(ops in proptest::collection::vec(op(), 1..300)) {
        agree(Eviction::TinyLfu, true, ops)?;
    }
}
