//! What loading costs.
//!
//! * `get_or_load_hit`: `get_or_load` on a key that is present, beside `get`
//!   on the same keys and the peers' loading lookups (moka's `get_with`,
//!   quick_cache's `get_or_insert_with`). Read-only Zipf over a preloaded cache.
//! * `load_16`: sixteen keys at a time, by one `get_or_load_all` call
//!   against sixteen `get_or_load` calls, all hits (Zipf keys of a
//!   preloaded cache) or all misses (keys never seen, in a full cache:
//!   each miss loads, inserts and evicts). Per key.
//! * Before the criterion groups, the stampede figures (printed): 64 threads,
//!   or 1,000 tokio tasks, ask for one absent key whose loader takes 20 ms; the
//!   loader must run once, and the time from its return to each waiter's
//!   wake-up is reported (median and p99 over all waiters of 30 rounds).
//! * Then a herd timing out (printed): 10k and 40k async waiters of one
//!   load, dropped at once as by a shared timeout; the time to drop them all
//!   (median of 5 rounds), which should grow with the herd, not its square.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{zipf_keys, SAMPLES};
use criterion::{Criterion, Throughput};
use larder::Cache;

const CAPACITY: u64 = 100_000;

/// A named lookup, for one row of a group.
type Lookup<'a> = (&'a str, &'a dyn Fn(u64) -> u64);

fn get_or_load_hit(c: &mut Criterion) {
    let keys = zipf_keys(0xF00D);
    let larder: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    let moka = moka::sync::Cache::new(CAPACITY);
    let quick = quick_cache::sync::Cache::new(CAPACITY as usize);
    for k in (0..CAPACITY).rev() {
        larder.insert(k, k);
        moka.insert(k, k);
        quick.insert(k, k);
    }
    // Keys outside the preloaded range are mapped into it: every call hits.
    let subjects: [Lookup<'_>; 4] = [
        ("larder_get", &|k| larder.get(&(k % CAPACITY)).unwrap_or(0)),
        ("larder_get_or_load", &|k| {
            larder.get_or_load(k % CAPACITY, |&k| k)
        }),
        ("moka_get_with", &|k| moka.get_with(k % CAPACITY, || k)),
        ("quick_cache_get_or_insert_with", &|k| {
            quick
                .get_or_insert_with(&(k % CAPACITY), || Ok::<_, ()>(k))
                .unwrap_or(0)
        }),
    ];
    let mut group = c.benchmark_group("get_or_load_hit");
    group.throughput(Throughput::Elements(1));
    for (name, lookup) in subjects {
        group.bench_function(name, |b| {
            let mut at = 0;
            b.iter(|| {
                at = (at + 1) & (SAMPLES - 1);
                std::hint::black_box(lookup(keys[at]))
            })
        });
    }
    group.finish();
}

fn load_16(c: &mut Criterion) {
    const BATCH: usize = 16;
    let keys = zipf_keys(0xBEEF);
    let cache: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    for k in (0..CAPACITY).rev() {
        cache.insert(k, k);
    }
    let mut group = c.benchmark_group("load_16");
    group.throughput(Throughput::Elements(BATCH as u64));
    let batch = |at: &mut usize| {
        *at = (*at + BATCH) & (SAMPLES - 1);
        keys[*at..*at + BATCH].iter().map(|k| k % CAPACITY)
    };
    group.bench_function("hits/get_or_load_all", |b| {
        let mut at = 0;
        b.iter(|| {
            let found = cache.get_or_load_all(batch(&mut at), |ids| {
                ids.iter().map(|&k| (k, k)).collect::<Vec<_>>()
            });
            std::hint::black_box(found)
        })
    });
    group.bench_function("hits/get_or_load", |b| {
        let mut at = 0;
        b.iter(|| {
            for k in batch(&mut at) {
                std::hint::black_box(cache.get_or_load(k, |&k| k));
            }
        })
    });
    // Fresh keys past the preloaded range: every lookup misses.
    let mut fresh = CAPACITY;
    let mut next = |n: usize| {
        fresh += n as u64;
        fresh - n as u64..fresh
    };
    group.bench_function("misses/get_or_load_all", |b| {
        b.iter(|| {
            let found = cache.get_or_load_all(next(BATCH), |ids| {
                ids.iter().map(|&k| (k, k)).collect::<Vec<_>>()
            });
            std::hint::black_box(found)
        })
    });
    group.bench_function("misses/get_or_load", |b| {
        b.iter(|| {
            for k in next(BATCH) {
                std::hint::black_box(cache.get_or_load(k, |&k| k));
            }
        })
    });
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// 64 threads on one absent key, 30 rounds.
fn stampede_threads() {
    let mut wakes = Vec::new();
    for round in 0..30u32 {
        let cache: Cache<u32, u32> = Cache::builder().max_capacity(100).build().unwrap();
        let loads = AtomicUsize::new(0);
        let returned = Mutex::new(None::<Instant>);
        let start = Barrier::new(64);
        let woke = Mutex::new(Vec::with_capacity(64));
        std::thread::scope(|s| {
            for _ in 0..64 {
                s.spawn(|| {
                    start.wait();
                    let v = cache.get_or_load(round, |&k| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        *returned.lock().unwrap() = Some(Instant::now());
                        k
                    });
                    let now = Instant::now();
                    assert_eq!(v, round);
                    woke.lock().unwrap().push(now);
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one load per stampede");
        let returned = returned.into_inner().unwrap().unwrap();
        wakes.extend(woke.into_inner().unwrap().into_iter().map(|w| w - returned));
    }
    wakes.sort_unstable();
    println!(
        "stampede, 64 threads x 30 rounds: 1 load each; loader return to waiter wake-up: median {:?}, p99 {:?}, max {:?}",
        percentile(&wakes, 0.5),
        percentile(&wakes, 0.99),
        wakes.last().unwrap()
    );
}

/// 1,000 tokio tasks on one absent key, 30 rounds.
fn stampede_tasks() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut wakes = Vec::new();
    for round in 0..30u32 {
        let cache: Arc<Cache<u32, u32>> =
            Arc::new(Cache::builder().max_capacity(100).build().unwrap());
        let loads = Arc::new(AtomicUsize::new(0));
        let returned = Arc::new(Mutex::new(None::<Instant>));
        let woke = runtime.block_on(async {
            let tasks: Vec<_> = (0..1_000)
                .map(|_| {
                    let (cache, loads, returned) = (cache.clone(), loads.clone(), returned.clone());
                    tokio::spawn(async move {
                        let v = cache
                            .get_or_load_async(round, async move {
                                loads.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                *returned.lock().unwrap() = Some(Instant::now());
                                round
                            })
                            .await;
                        assert_eq!(v, round);
                        Instant::now()
                    })
                })
                .collect();
            let mut woke = Vec::with_capacity(tasks.len());
            for t in tasks {
                woke.push(t.await.unwrap());
            }
            woke
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one load per stampede");
        let returned = returned.lock().unwrap().unwrap();
        wakes.extend(
            woke.into_iter()
                .map(|w| w.saturating_duration_since(returned)),
        );
    }
    wakes.sort_unstable();
    println!(
        "stampede, 1,000 tokio tasks x 30 rounds: 1 load each; loader return to waiter wake-up: median {:?}, p99 {:?}, max {:?}",
        percentile(&wakes, 0.5),
        percentile(&wakes, 0.99),
        wakes.last().unwrap()
    );
}

/// Async waiters of one load, all dropped at once (a shared timeout).
fn herd_timeout() {
    use std::future::Future;
    use std::task::{Context, Waker};
    for herd in [10_000, 40_000] {
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
                let mut cx = Context::from_waker(Waker::noop());
                let mut leader =
                    Box::pin(cache.get_or_load_async(1, std::future::pending::<u32>()));
                assert!(leader.as_mut().poll(&mut cx).is_pending());
                let mut waiters: Vec<_> = (0..herd)
                    .map(|_| Box::pin(cache.get_or_load_async(1, async { 0 })))
                    .collect();
                for w in &mut waiters {
                    assert!(w.as_mut().poll(&mut cx).is_pending());
                }
                let start = Instant::now();
                drop(waiters);
                start.elapsed()
            })
            .collect();
        times.sort_unstable();
        println!(
            "herd timing out: {herd} async waiters of one load dropped at once in {:?} (median of 5)",
            times[2]
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Positional arguments are name filters, except baseline names.
    let filtered = args[1..].iter().enumerate().any(|(i, a)| {
        let baseline_name = i > 0 && args[i].ends_with("baseline");
        !a.starts_with('-') && !baseline_name
    });
    if args.iter().any(|a| a == "--bench") && !filtered {
        stampede_threads();
        stampede_tasks();
        herd_timeout();
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    get_or_load_hit(&mut c);
    load_16(&mut c);
    c.final_summary();
}
