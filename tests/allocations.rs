//! What maintenance of an empty shard allocates: nothing, with or without the
//! room `initial_capacity` reserved; what a write-back queue holds while
//! flush reports overlap without end, and what the tag index holds while a
//! key is re-tagged without end: no more as writes go on; hits through a
//! borrowed key, during a refresh too: nothing. Counted with a
//! global allocator that
//! counts every thread's allocations, so this binary runs one test, which
//! makes the checks one after another (the harness's own threads then stay
//! quiet while they count).

use std::alloc::System;
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use larder::{Cache, Clock, EntryOptions, Eviction, Op, RemovalCause, Store, WriteBack};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and bytes allocated while `f` runs.
fn counted(f: impl FnOnce()) -> (usize, usize) {
    let region = Region::new(GLOBAL);
    f();
    let change = region.change();
    (
        change.allocations + change.reallocations,
        change.bytes_allocated,
    )
}

#[test]
fn empty_shards_allocate_nothing_and_churn_holds_no_more() {
    invalidate_all_on_an_empty_cache_allocates_nothing();
    maintenance_of_empty_shards_allocates_nothing();
    refused_writes_into_an_empty_shard_allocate_nothing();
    overlapping_reports_hold_no_more_as_writes_are_stored();
    rewrites_within_a_standing_tick_hold_no_more_as_they_go_on();
    retagging_a_key_with_ever_new_tags_holds_no_more();
    an_index_whose_tagged_entries_all_left_is_given_back();
    hits_through_a_borrowed_key_allocate_nothing();
    hits_during_a_refresh_allocate_nothing();
}

/// While a refresh runs, hits on its key take the cached value as any hit
/// does: through a borrowed key they make no owned one and allocate nothing.
/// (They are counted from within the loader, which may read its own key
/// while it refreshes it.)
fn hits_during_a_refresh_allocate_nothing() {
    let (clock, time) = Clock::mock();
    let cache: Cache<String, u64> = Cache::builder()
        .max_capacity(100)
        .refresh_after(Duration::from_secs(60))
        .clock(clock)
        .build()
        .unwrap();
    cache.insert("k".to_string(), 1);
    time.advance(Duration::from_secs(60));
    let mut during = None;
    let refreshed = cache.get_or_load_by_ref("k", |_| {
        during = Some(counted(|| {
            for _ in 0..1_000 {
                assert_eq!(cache.get_or_load_by_ref("k", |_| unreachable!()), 1);
                let hit = cache.try_get_or_load_by_ref("k", |_| Err::<u64, ()>(()));
                assert_eq!(hit, Ok(1));
            }
        }));
        2
    });
    assert_eq!(refreshed, 2);
    assert_eq!(during, Some((0, 0)), "hits during a refresh allocated");
}

/// `get_or_load_by_ref` and its twins make an owned key only on a miss: a
/// hit on a `String`-keyed cache allocates nothing, where `get_or_load`
/// takes the key it must be handed by value.
fn hits_through_a_borrowed_key_allocate_nothing() {
    let cache: Cache<String, u64> = Cache::builder().max_capacity(100).build().unwrap();
    let (misses, _) = counted(|| {
        assert_eq!(cache.get_or_load_by_ref("k", |k| k.len() as u64), 1);
    });
    assert!(misses > 0, "a miss stores an owned key");
    let (by_ref, _) = counted(|| {
        for _ in 0..1_000 {
            assert_eq!(cache.get_or_load_by_ref("k", |_| unreachable!()), 1);
            let hit = cache.try_get_or_load_by_ref("k", |_| Err::<u64, ()>(()));
            assert_eq!(hit, Ok(1));
            assert_eq!(cache.optionally_get_or_load_by_ref("k", |_| None), Some(1));
        }
    });
    assert_eq!(by_ref, 0, "hits through a borrowed key allocated");
    let (by_value, _) = counted(|| {
        for _ in 0..1_000 {
            assert_eq!(cache.get_or_load("k".to_string(), |_| unreachable!()), 1);
        }
    });
    assert!(by_value >= 1_000, "an owned key per call: {by_value}");
}

/// A shard whose tagged entries all left (removed, or rewritten without
/// tags) while it kept others holds no more than one that never had a tag:
/// its tag index is given back with the last tagged entry. It was kept at
/// its peak until the shard emptied (here about 13 MB for 100,000 entries,
/// each with two tags), and untagged writes kept taking the slower path
/// meant for shards with tags. A small index is kept, empty.
fn an_index_whose_tagged_entries_all_left_is_given_back() {
    const N: u64 = 100_000;
    let run = |tagged: bool| -> i64 {
        let region = Region::new(GLOBAL);
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(2 * N)
            .shards(1)
            .build()
            .unwrap();
        cache.insert(u64::MAX, 0);
        for k in 0..N {
            if tagged {
                cache.insert_with(k, k, EntryOptions::new().tags([k, N]));
            } else {
                cache.insert(k, k);
            }
        }
        for k in 0..N {
            if k % 2 == 0 {
                cache.remove(&k);
            } else {
                cache.insert(k, k);
            }
        }
        assert_eq!(cache.len() as u64, 1 + N / 2);
        let change = region.change();
        // The index, rebuilt, still works.
        cache.insert_with(1, 1, EntryOptions::new().tags(["again"]));
        cache.invalidate_tag(N);
        assert_eq!(cache.peek(&3), Some(3), "an untagged rewrite kept a tag");
        cache.invalidate_tag("again");
        assert_eq!(cache.peek(&1), None);
        drop(cache);
        change.bytes_allocated as i64 - change.bytes_deallocated as i64
    };
    let untagged = run(false);
    let tagged = run(true);
    assert!(
        tagged - untagged < 64 * 1024,
        "tagged entries gone, the shard held {tagged} bytes against {untagged}"
    );
    // A shard whose one tagged entry comes and goes keeps its small index
    // instead of building it anew each time (5 allocations a round).
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(1_000)
        .shards(1)
        .build()
        .unwrap();
    cache.insert(u64::MAX, 0);
    let round = || {
        cache.insert_with(1, 1, EntryOptions::new().tags([7u64]));
        cache.remove(&1);
    };
    round();
    let (allocations, _) = counted(|| (0..1_000).for_each(|_| round()));
    assert!(
        allocations < 100,
        "{allocations} allocations in 1,000 rounds"
    );
}

/// A key re-tagged with ever-new tags (a version, a timestamp) while its
/// shard is never emptied: each tag's interned id is freed with its group
/// and taken again by the next, so the index holds no more as it goes on.
fn retagging_a_key_with_ever_new_tags_holds_no_more() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .build()
        .unwrap();
    cache.insert_with(0, 0, EntryOptions::new().tags(["steady"]));
    let retag = |from: u64, to: u64| {
        for version in from..to {
            cache.insert_with(1, version, EntryOptions::new().tags([version]));
        }
    };
    retag(0, 1_000); // the index's tables reach their size
    let region = Region::new(GLOBAL);
    retag(1_000, 101_000);
    let change = region.change();
    let held = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    assert!(
        held < 64 * 1024,
        "100,000 re-taggings of one key left {held} bytes held"
    );
    // The index still works: the last tag finds its entry, the first none.
    cache.invalidate_tag(1_000u64);
    assert_eq!(cache.peek(&1), Some(100_999));
    cache.invalidate_tag(100_999u64);
    assert_eq!((cache.peek(&1), cache.peek(&0)), (None, Some(0)));
    cache.invalidate_tag("steady");
    assert!(cache.is_empty());
}

fn invalidate_all_on_an_empty_cache_allocates_nothing() {
    for initial in [0, 1 << 16] {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(1 << 16)
            .shards(4)
            .initial_capacity(initial)
            .build()
            .unwrap();
        for k in 0..1_000 {
            cache.insert(k, k);
        }
        cache.invalidate_all();
        let (allocations, bytes) = counted(|| {
            for _ in 0..20 {
                cache.invalidate_all();
            }
        });
        assert!(
            bytes < 4096,
            "initial_capacity {initial}: 20 calls allocated {allocations} times, {bytes} bytes"
        );
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), Some(1));
    }
}

fn maintenance_of_empty_shards_allocates_nothing() {
    for initial in [0, 4_000] {
        let (clock, _time) = Clock::mock();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(10_000)
            .shards(4)
            .initial_capacity(initial)
            .time_to_live(Duration::from_secs(60))
            .clock(clock)
            .build()
            .unwrap();
        cache.insert(1, 1);
        cache.remove(&1);
        cache.run_pending_tasks();
        let (allocations, _) = counted(|| {
            for _ in 0..1_000 {
                cache.run_pending_tasks();
            }
        });
        assert!(
            allocations < 10,
            "initial_capacity {initial}: 1000 passes over empty shards allocated {allocations} times"
        );
    }
}

fn refused_writes_into_an_empty_shard_allocate_nothing() {
    for initial in [0, 4_000] {
        let cache: Cache<u64, Vec<u8>> = Cache::builder()
            .max_capacity(1_000)
            .shards(1)
            .weigher(|_: &u64, v: &Vec<u8>| v.len() as u32)
            .initial_capacity(initial)
            .time_to_live(Duration::from_secs(60))
            .build()
            .unwrap();
        let heavy = vec![0u8; 2_000];
        assert!(cache.try_insert(1, heavy.clone()).is_err());
        let mut values: Vec<Vec<u8>> = (0..1_000).map(|_| heavy.clone()).collect();
        let (allocations, _) = counted(|| {
            for k in 0..1_000 {
                let value = values.pop().expect("one per write");
                assert!(cache.try_insert(k, value).is_err());
            }
        });
        assert!(
            allocations < 10,
            "initial_capacity {initial}: 1000 refused writes allocated {allocations} times"
        );
    }
}

/// Keys with this bit the store refuses.
const REFUSED: u64 = 1 << 40;

struct Refusing;
impl Store<u64, u64> for Refusing {
    type Error = &'static str;
    fn load(&self, _: &u64) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
    fn write(&self, op: &Op<u64, u64>) -> Result<(), Self::Error> {
        match op {
            Op::Put(k, _) if k & REFUSED != 0 => Err("refused"),
            _ => Ok(()),
        }
    }
}

/// Bytes allocated and not freed, across every thread.
fn live() -> i64 {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

/// Round after round, a flush reports a refused write and its listener is
/// slow to hear that write's cached copy dropped, so that the previous
/// round's report is settled only after this round's was taken: a report is
/// always out. Meanwhile 100 new keys a round are stored. The queue kept
/// every key stored while a report was out (about 22 bytes a key, without
/// bound); it now keeps only the reported keys.
fn overlapping_reports_hold_no_more_as_writes_are_stored() {
    let (entered_tx, entered_rx) = mpsc::channel::<u64>();
    let entered_tx = Mutex::new(entered_tx);
    let gates: Arc<Mutex<HashMap<u64, mpsc::Receiver<()>>>> = Arc::default();
    let gate_of = gates.clone();
    let cache = Cache::builder()
        .max_capacity(1_000)
        .eviction(Eviction::Lru)
        .eviction_listener(move |k: u64, _: u64, cause| {
            if k & REFUSED != 0 && cause == RemovalCause::Explicit {
                let go = gate_of
                    .lock()
                    .unwrap()
                    .remove(&k)
                    .expect("a gate per refused key");
                entered_tx.lock().unwrap().send(k).unwrap();
                go.recv_timeout(Duration::from_secs(20)).unwrap();
            }
        })
        .write_back(
            Refusing,
            WriteBack::default()
                .retries(0, Duration::ZERO)
                .max_delay(Duration::ZERO)
                .batch(1),
        )
        .build()
        .unwrap();
    type Held = (mpsc::Sender<()>, std::thread::JoinHandle<()>);
    let mut held: Option<Held> = None;
    let mut next = 0u64;
    let mut marks = Vec::new();
    let base = live();
    for round in 0..600u64 {
        let refused = REFUSED | round;
        let (go, gate) = mpsc::channel();
        gates.lock().unwrap().insert(refused, gate);
        cache.put(refused, 0).unwrap();
        let flushing = cache.clone();
        let reporter = std::thread::spawn(move || assert!(flushing.flush().is_err()));
        assert_eq!(
            entered_rx.recv_timeout(Duration::from_secs(20)),
            Ok(refused)
        );
        // The previous round's report is settled only now.
        if let Some((go, reporter)) = held.take() {
            go.send(()).unwrap();
            reporter.join().unwrap();
        }
        held = Some((go, reporter));
        for _ in 0..100 {
            cache.put(next, next).unwrap();
            next += 1;
        }
        assert!(cache.flush().is_ok(), "all stored");
        if round == 99 || round == 599 {
            marks.push(live() - base);
        }
    }
    let (go, reporter) = held.take().expect("a report out");
    go.send(()).unwrap();
    reporter.join().unwrap();
    assert!(cache.close().is_ok());
    assert!(
        marks[1] - marks[0] < 128 * 1024,
        "50,000 more keys stored while reports were out: {} -> {} bytes held",
        marks[0],
        marks[1]
    );
}

/// A clock standing still (a mock never advanced), 100 keys rewritten with
/// time-to-live under a tick that changes from write to write: each rewrite
/// files its token among those due within the tick again. That list kept
/// every deadline a token had had in the tick (15.7 MB after 500,000
/// writes); it now drops the ones moved since.
fn rewrites_within_a_standing_tick_hold_no_more_as_they_go_on() {
    let (clock, _time) = Clock::mock();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(1_000)
        .clock(clock)
        .build()
        .unwrap();
    let mut i = 0u64;
    let mut write = |n: u64| {
        for _ in 0..n {
            let ttl = Duration::from_nanos(1_000 + (i % 400) * 1_000);
            cache.insert_with(i % 100, i, EntryOptions::new().ttl(ttl));
            i += 1;
        }
    };
    write(50_000);
    let base = live();
    write(50_000);
    let after_one = live() - base;
    write(450_000);
    let after_ten = live() - base;
    assert!(
        after_ten - after_one < 64 * 1024,
        "100 keys, 450,000 more rewrites: {after_one} -> {after_ten} bytes held"
    );
}
