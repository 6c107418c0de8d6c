//! Tag groups against a model (map of key → value and tags), and under
//! concurrency: inserts racing with invalidations never leave behind an entry
//! that was stored before an invalidation of its tag began.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use crate::{Cache, Clock, EntryOptions, Eviction, RemovalCause, Tag};

const TAGS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16),
    InsertTagged(u8, u16, u8),
    Remove(u8),
    Get(u8),
    InvalidateTag(u8),
    InvalidateTwo(u8, u8),
    InvalidateOdd,
    Advance,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..24, any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        4 => (0u8..24, any::<u16>(), 1u8..16).prop_map(|(k, v, t)| Op::InsertTagged(k, v, t)),
        1 => (0u8..24).prop_map(Op::Remove),
        3 => (0u8..24).prop_map(Op::Get),
        2 => (0u8..4).prop_map(Op::InvalidateTag),
        1 => (0u8..4, 0u8..4).prop_map(|(a, b)| Op::InvalidateTwo(a, b)),
        1 => Just(Op::InvalidateOdd),
        1 => Just(Op::Advance),
    ]
}

/// The tags a 4-bit mask picks.
fn tags_of(mask: u8) -> Vec<&'static str> {
    (0..4)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| TAGS[i])
        .collect()
}

fn agree(eviction: Eviction, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (clock, time) = Clock::mock();
    let log: Arc<Mutex<Vec<(u8, RemovalCause)>>> = Arc::default();
    let sink = log.clone();
    let cache: Cache<u8, u16> = Cache::builder()
        .max_capacity(1_000)
        .shards(2)
        .eviction(eviction)
        .clock(clock)
        .eviction_listener(move |k, _, c| sink.lock().unwrap().push((k, c)))
        .build()
        .unwrap();
    // key → (value, tags, expires at second)
    let mut model: HashMap<u8, (u16, Vec<&str>, Option<u64>)> = HashMap::new();
    let mut now = 0u64;
    for op in ops {
        match op {
            Op::Insert(k, v) => {
                cache.insert(k, v);
                model.insert(k, (v, Vec::new(), None));
            }
            Op::InsertTagged(k, v, mask) => {
                let tags = tags_of(mask);
                // Some tagged entries also expire, to show expiry cleans the index.
                let options = EntryOptions::new().tags(tags.iter().copied());
                let expires = (v % 3 == 0).then_some(now + 2);
                let options = match expires {
                    Some(_) => options.ttl(Duration::from_secs(2)),
                    None => options,
                };
                cache.insert_with(k, v, options);
                model.insert(k, (v, tags, expires));
            }
            Op::Remove(k) => {
                let expected = model
                    .remove(&k)
                    .filter(|e| e.2.is_none_or(|at| at > now))
                    .map(|e| e.0);
                prop_assert_eq!(cache.remove(&k), expected);
            }
            Op::Get(k) => {
                let expected = model
                    .get(&k)
                    .filter(|e| e.2.is_none_or(|at| at > now))
                    .map(|e| e.0);
                prop_assert_eq!(cache.get(&k), expected);
            }
            Op::InvalidateTag(t) => {
                cache.invalidate_tag(TAGS[t as usize]);
                model.retain(|_, e| !e.1.contains(&TAGS[t as usize]));
            }
            Op::InvalidateTwo(a, b) => {
                let pair = [Tag::from(TAGS[a as usize]), Tag::from(TAGS[b as usize])];
                cache.invalidate_tags(pair.iter());
                model.retain(|_, e| {
                    !e.1.contains(&TAGS[a as usize]) && !e.1.contains(&TAGS[b as usize])
                });
            }
            Op::InvalidateOdd => {
                cache.invalidate_entries_if(|k, _| k % 2 == 1);
                model.retain(|k, _| k % 2 == 0);
            }
            Op::Advance => {
                time.advance(Duration::from_secs(1));
                now += 1;
            }
        }
        cache.validate();
        let mut seen: Vec<(u8, u16)> = cache.iter().collect();
        seen.sort_unstable();
        let mut expected: Vec<(u8, u16)> = model
            .iter()
            .filter(|(_, e)| e.2.is_none_or(|at| at > now))
            .map(|(&k, e)| (k, e.0))
            .collect();
        expected.sort_unstable();
        prop_assert_eq!(seen, expected);
        // The index holds only tagged entries still stored (expired ones stay
        // until reclaimed, so count those too).
        let tagged = model.values().filter(|e| !e.1.is_empty()).count();
        prop_assert!(cache.tagged_entries() <= tagged);
    }
    cache.invalidate_all();
    prop_assert_eq!(
        cache.tagged_entries(),
        0,
        "a cleared cache keeps no tag index"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn tags_match_the_model(ops in proptest::collection::vec(op(), 1..300)) {
        agree(Eviction::TinyLfu, ops.clone())?;
        agree(Eviction::Lru, ops)?;
    }
}

#[test]
fn the_index_follows_evictions_and_replacements() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .eviction(Eviction::Lru)
        .build()
        .unwrap();
    for i in 0..1_000 {
        cache.insert_with(i, i, EntryOptions::new().tags([i % 7, 1_000]));
        cache.validate();
    }
    assert_eq!(
        cache.tagged_entries(),
        cache.len(),
        "evicted entries left the index"
    );
    for i in 900..1_000 {
        cache.insert(i, i); // untagged now: a replaced entry's tags are the new value's
    }
    assert_eq!(cache.tagged_entries(), 0);
    cache.invalidate_tag(1_000u32);
    assert_eq!(cache.len(), 100, "no entry carries the tag any more");
}

#[test]
fn racing_inserts_never_outlive_an_invalidation_that_began_after_them() {
    let cache: Cache<u64, u64> = Cache::builder().max_capacity(100_000).build().unwrap();
    let seq = AtomicU64::new(1);
    // value id → the sequence number read after its insert returned.
    let landed: Mutex<HashMap<u64, u64>> = Mutex::new(HashMap::new());
    // tag → the latest sequence number read before an invalidation began.
    let began: [AtomicU64; 4] = Default::default();
    let next_id = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (cache, seq, landed, next_id) = (&cache, &seq, &landed, &next_id);
            s.spawn(move || {
                let mut x = t + 11;
                for _ in 0..20_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = x % 2_000;
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    let tag = format!("g{}", key % 4);
                    cache.insert_with(key, id, EntryOptions::new().tags([tag]));
                    let after = seq.fetch_add(1, Ordering::SeqCst);
                    landed.lock().unwrap().insert(id, after);
                }
            });
        }
        let (cache, seq, began) = (&cache, &seq, &began);
        s.spawn(move || {
            for round in 0..400u64 {
                let g = (round % 4) as usize;
                let before = seq.fetch_add(1, Ordering::SeqCst);
                began[g].fetch_max(before, Ordering::SeqCst);
                cache.invalidate_tag(format!("g{g}"));
            }
        });
    });
    let landed = landed.into_inner().unwrap();
    let mut checked = 0;
    for (key, id) in cache.iter() {
        let g = (key % 4) as usize;
        let last_invalidation = began[g].load(Ordering::SeqCst);
        assert!(
            landed[&id] > last_invalidation,
            "key {key}: value stored at {} survived an invalidation begun at {last_invalidation}",
            landed[&id]
        );
        checked += 1;
    }
    cache.validate();
    assert!(cache.tagged_entries() == cache.len());
    let _ = checked;
    cache.invalidate_all();
    assert_eq!(cache.tagged_entries(), 0);
    let _: HashSet<u8> = HashSet::new();
}
