//! Many threads mixing every operation on a small cache, bounded in operations
//! and in time: no deadlock, no panic, the bound and the counters add up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::{Cache, Eviction, RemovalCause};

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn stress(eviction: Eviction, weighted: bool) {
    const THREADS: u64 = 4;
    const OPS: u64 = 40_000;
    const CAPACITY: u64 = 256;
    let size_evictions = Arc::new(AtomicU64::new(0));
    let explicit = Arc::new(AtomicU64::new(0));
    let (se, ex) = (size_evictions.clone(), explicit.clone());
    let mut builder = Cache::builder()
        .max_capacity(CAPACITY)
        .shards(4)
        .eviction(eviction)
        .record_stats()
        .eviction_listener(move |_k: u64, _v: u64, cause| match cause {
            RemovalCause::Size => {
                se.fetch_add(1, Ordering::Relaxed);
            }
            RemovalCause::Explicit => {
                ex.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
    if weighted {
        builder = builder.weigher(|_, v| (*v % 8) as u32);
    }
    let cache = builder.build().unwrap();
    let gets = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = cache.clone();
            let gets = gets.clone();
            std::thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                for i in 0..OPS {
                    if i % 1024 == 0 && Instant::now() > deadline {
                        break;
                    }
                    let r = xorshift(&mut rng);
                    let key = (r >> 8) % 1024;
                    match r % 100 {
                        0..=59 => {
                            gets.fetch_add(1, Ordering::Relaxed);
                            if let Some(v) = cache.get(&key) {
                                assert_eq!(v >> 32, key, "value belongs to another key");
                            }
                        }
                        60..=64 => {
                            let _ = cache.peek(&key);
                            let _ = cache.contains_key(&key);
                        }
                        65..=92 => cache.insert(key, (key << 32) | (r & 0xffff)),
                        93..=97 => {
                            cache.remove(&key);
                        }
                        98 => {
                            assert!(cache.weighted_size() <= CAPACITY);
                            let _ = cache.iter().take(50).count();
                        }
                        _ => {
                            if r % 1000 < 10 {
                                cache.invalidate_all();
                            } else {
                                let _ = cache.stats();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no worker panicked");
    }
    assert!(cache.weighted_size() <= CAPACITY);
    let s = cache.stats();
    assert_eq!(s.hits + s.misses, gets.load(Ordering::Relaxed));
    assert_eq!(s.evictions, size_evictions.load(Ordering::Relaxed));
    assert_eq!(s.invalidations, explicit.load(Ordering::Relaxed));
    assert_eq!(s.rejections, 0);
    assert_eq!(
        s.inserts - s.evictions - s.invalidations,
        cache.len() as u64,
        "every inserted entry is resident or was counted leaving"
    );
    assert_eq!(cache.iter().count(), cache.len());
}

#[test]
fn tinylfu_under_contention() {
    stress(Eviction::TinyLfu, false);
}

#[test]
fn weighted_tinylfu_under_contention() {
    stress(Eviction::TinyLfu, true);
}

#[test]
fn lru_under_contention() {
    stress(Eviction::Lru, false);
}

#[test]
fn lfu_under_contention() {
    stress(Eviction::Lfu, false);
}

#[test]
fn weighted_lru_under_contention() {
    stress(Eviction::Lru, true);
}

#[test]
fn weighted_lfu_under_contention() {
    stress(Eviction::Lfu, true);
}
