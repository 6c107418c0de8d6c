//! Threads mixing reads, writes, removals, invalidations and expiry on a
//! small cache: afterwards every value ever written is either resident or
//! was told to the listener exactly once, the counters agree with what the
//! listener saw, and the shards' invariants hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Cache, Clock, EntryOptions, Eviction, RemovalCause};

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

type Log = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

fn run(eviction: Eviction) {
    const THREADS: u64 = 3;
    const OPS: u64 = 60_000;
    let (clock, time) = Clock::mock();
    let log = Log::default();
    let sink = log.clone();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(64)
        .shards(2)
        .eviction(eviction)
        .record_stats()
        .weigher(|_, v| (*v & 3) as u32)
        .time_to_live(Duration::from_millis(50))
        .clock(clock)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    let written: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let gets = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cache, written, gets, time) =
                (cache.clone(), written.clone(), gets.clone(), time.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                let mut mine = Vec::new();
                for i in 0..OPS {
                    let r = xorshift(&mut rng);
                    let key = (r >> 8) % 160;
                    // Unique values: thread, sequence, and a weight of 0..3.
                    let value = ((t * OPS + i) << 2) | ((r & 3) % 3);
                    match r % 100 {
                        0..=54 => {
                            gets.fetch_add(1, Ordering::Relaxed);
                            let _ = cache.get(&key);
                        }
                        55..=84 => {
                            mine.push((key, value));
                            if r % 7 == 0 {
                                let ttl = Duration::from_millis(r % 20);
                                let tag = format!("t{}", key % 5);
                                cache.insert_with(
                                    key,
                                    value,
                                    EntryOptions::new().ttl(ttl).tags([tag]),
                                );
                            } else {
                                cache.insert(key, value);
                            }
                        }
                        85..=91 => {
                            cache.remove(&key);
                        }
                        92..=95 => time.advance(Duration::from_millis(1)),
                        96 => cache.run_pending_tasks(),
                        97 if r % 2 == 0 => cache.invalidate_entries_if(|k, _| k % 11 == r % 11),
                        97 => cache.invalidate_tag(format!("t{}", r % 5)),
                        98 => {
                            for (k, v) in cache.iter().take(40) {
                                assert_eq!(k, k % 160, "{v}");
                            }
                        }
                        _ => {
                            if r % 1000 < 20 {
                                cache.invalidate_all();
                            } else {
                                let _ = cache.stats();
                            }
                        }
                    }
                }
                written.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no worker panicked");
    }
    // Expired entries not reclaimed yet count in `len` but are never read.
    cache.run_pending_tasks();
    cache.validate();
    let resident: HashMap<u64, u64> = cache.iter().collect();
    assert_eq!(resident.len(), cache.len());
    let log = log.lock().unwrap();
    let mut told: HashMap<u64, RemovalCause> = HashMap::new();
    for &(_, v, cause) in log.iter() {
        assert!(told.insert(v, cause).is_none(), "value {v} told twice");
    }
    for &(k, v) in written.lock().unwrap().iter() {
        let here = resident.get(&k) == Some(&v);
        assert!(
            here != told.contains_key(&v),
            "value {v} of key {k}: resident {here}, told {:?}",
            told.get(&v)
        );
    }
    let count = |c: RemovalCause| log.iter().filter(|e| e.2 == c).count() as u64;
    let s = cache.stats();
    assert_eq!(s.hits + s.misses, gets.load(Ordering::Relaxed));
    assert_eq!(s.evictions + s.rejections, count(RemovalCause::Size));
    assert_eq!(s.expirations, count(RemovalCause::Expired));
    assert_eq!(s.tag_invalidations, count(RemovalCause::Invalidated));
    assert_eq!(
        s.invalidations + s.updates,
        count(RemovalCause::Explicit) + count(RemovalCause::Replaced)
    );
    let weight: u64 = log
        .iter()
        .filter(|e| e.2 == RemovalCause::Size)
        .map(|e| e.1 & 3)
        .sum();
    assert_eq!(s.evicted_weight, weight);
}

#[test]
fn lru_accounts_for_every_value_under_contention() {
    run(Eviction::Lru);
}

#[test]
fn lfu_accounts_for_every_value_under_contention() {
    run(Eviction::Lfu);
}

#[test]
fn tinylfu_accounts_for_every_value_under_contention() {
    run(Eviction::TinyLfu);
}

/// A sweeper whose listener panics keeps sweeping, and once the last handle
/// is dropped it lets go of the cache: the values are dropped with it.
#[test]
fn a_background_sweeper_survives_a_panicking_listener_and_lets_go() {
    let (clock, time) = Clock::mock();
    let heard = Arc::new(AtomicU64::new(0));
    let count = heard.clone();
    let value = Arc::new(0u64);
    let cache: Cache<u64, Arc<u64>> = Cache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(1))
        .clock(clock)
        .background_sweep(Duration::from_millis(1))
        .eviction_listener(move |_, _, _| {
            count.fetch_add(1, Ordering::SeqCst);
            panic!("listener failure");
        })
        .build()
        .unwrap();
    let wait = |done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(done());
    };
    for round in 1..=2 {
        for k in 0..5 {
            cache.insert(k, value.clone());
        }
        time.advance(Duration::from_secs(1));
        wait(&|| heard.load(Ordering::SeqCst) == 5 * round);
    }
    cache.insert(9, value.clone());
    drop(cache);
    wait(&|| Arc::strong_count(&value) == 1);
}

/// A sweeper with an interval longer than any test (here: past the end of
/// time) ends as soon as the cache is dropped, not an interval later.
#[test]
fn a_background_sweeper_ends_when_the_cache_is_dropped_whatever_its_interval() {
    for interval in [Duration::from_secs(3600), Duration::MAX] {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(100)
            .time_to_live(Duration::from_secs(1))
            .background_sweep(interval)
            .build()
            .unwrap();
        cache.insert(1, 1);
        let alive = cache.sweeper_alive().expect("the sweeper started");
        assert!(alive.upgrade().is_some(), "the sweeper runs");
        drop(cache);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive.upgrade().is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            alive.upgrade().is_none(),
            "the sweeper of interval {interval:?} outlived its cache"
        );
    }
}
